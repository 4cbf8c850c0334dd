import json

import pytest
from django.db.models import QuerySet

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, PermissionDenied, ValidationFailed
from apps.evals import selectors, services
from apps.evals.models import TestCase as Case
from tests.evals.conftest import add_case
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
CONTAINS = [{"type": "contains", "value": "tides"}]


def _line(**case) -> str:
    base = {"name": "c", "variables": {"topic": "x"}, "assertions": CONTAINS, "tags": []}
    return json.dumps({**base, **case})


def test_create_update_delete_are_audited(writer):
    template = writer.template
    case = add_case(template, "tides", "tides", CONTAINS, tags=["smoke", "smoke", " core "])
    assert case.tags == ["core", "smoke"] and case.squad_id == template.squad_id
    engineer = UserFactory(username="sme")
    services.test_case_update(actor=engineer, case=case, assertions=[{"type": "schema_valid"}])
    case.refresh_from_db()
    assert case.assertions == [{"type": "schema_valid"}] and case.name == "tides"
    services.test_case_delete(actor=engineer, case=case)
    assert not Case.objects.exists()
    actions = list(
        AuditEvent.objects.filter(action__startswith="eval.").values_list("action", flat=True)
    )
    assert actions == ["eval.case_created", "eval.case_updated", "eval.case_deleted"]


def test_who_writes_cases(writer):
    add_case(writer.template, "by sme", "x", CONTAINS, user="sme")
    add_case(writer.template, "by owner", "x", CONTAINS, user="owner")
    for user in ("viewer", "compliance"):
        with pytest.raises(PermissionDenied):
            add_case(writer.template, f"by {user}", "x", CONTAINS, user=user)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"name": "  "}, "name", "non-empty"),
        ({"variables": []}, "variables", "JSON object"),
        ({"variables": {"n": 1}}, "variables", "'topic' is a required property"),
        ({"variables": {"topic": ""}}, "variables.topic", "should be non-empty"),
        ({"assertions": [{"type": "regex", "pattern": "("}]}, "assertions[0].pattern", "regular"),
        (
            {"assertions": [{"type": "judge", "rubric": "r", "target": "nope", "threshold": 1}]},
            "assertions[0].target",
            "No enabled model target named 'nope'",
        ),
        ({"tags": "a,b"}, "tags", "list of strings"),
        # Python's json reads NaN and Infinity; JSON columns refuse them (a 500 on save)
        ({"variables": {"topic": "x", "w": float("nan")}}, "variables", "NaN or Infinity"),
        (
            {"assertions": [{"type": "equals_json", "value": {"a": [float("inf")]}}]},
            "assertions[0].value",
            "NaN or Infinity",
        ),
    ],
)
def test_bad_cases_are_refused_naming_the_field(writer, changes, field, message):
    data = {"name": "c", "variables": {"topic": "x"}, "assertions": CONTAINS, **changes}
    with pytest.raises(ValidationFailed, match=message) as info:
        services.test_case_create(
            actor=UserFactory(username="engineer"), template=writer.template, **data
        )
    assert info.value.field == field
    assert not Case.objects.exists()


def test_duplicate_names_conflict(writer):
    add_case(writer.template, "one", "x", CONTAINS)
    with pytest.raises(Conflict, match="already exists"):
        add_case(writer.template, "one", "y", CONTAINS)
    two = add_case(writer.template, "two", "x", CONTAINS)
    with pytest.raises(Conflict):
        services.test_case_update(actor=UserFactory(username="engineer"), case=two, name="one")


@pytest.fixture
def racing_writer(writer, monkeypatch):
    """Another request creates a case named 'taken' right after the service checked the
    name (emulated: the case exists, but the service's first look for it does not see it:
    the name check of create and rename, the locked read of the existing cases of import)."""
    Case.objects.create(squad_id=writer.template.squad_id, template=writer.template, name="taken")
    exists, for_update, state = QuerySet.exists, QuerySet.select_for_update, {"raced": False}

    def stale(self):
        if self.model is Case and not state["raced"]:
            state["raced"] = True
            return True
        return False

    monkeypatch.setattr(QuerySet, "exists", lambda qs: False if stale(qs) else exists(qs))
    monkeypatch.setattr(
        QuerySet,
        "select_for_update",
        lambda qs, **kw: for_update(qs.exclude(name="taken") if stale(qs) else qs, **kw),
    )
    return writer


@pytest.mark.parametrize("how", ["create", "rename", "import"])
def test_a_name_taken_meanwhile_is_a_conflict_not_a_500(racing_writer, how):
    template, engineer = racing_writer.template, UserFactory(username="engineer")
    with pytest.raises(Conflict, match="'taken'") as info:
        if how == "create":
            add_case(template, "taken", "x", CONTAINS)
        elif how == "rename":
            case = Case.objects.create(squad_id=template.squad_id, template=template, name="mine")
            services.test_case_update(
                actor=engineer, case=case, name="taken", variables={"topic": "x"}
            )
        else:
            content = (_line(name="taken") + "\n").encode()
            services.test_cases_import(actor=engineer, template=template, content=content)
    assert info.value.field == ("file" if how == "import" else "name")


def test_import_adds_and_replaces_and_export_round_trips(writer):
    template = writer.template
    add_case(template, "old", "x", CONTAINS)
    content = "\n".join(
        [
            _line(name="old", variables={"topic": "changed"}),
            "",
            _line(name="new", tags=["smoke"]),
        ]
    )
    result = services.test_cases_import(
        actor=UserFactory(username="sme"), template=template, content=content.encode()
    )
    assert (result.created, result.updated, result.unchanged) == (1, 1, 0)
    cases = list(
        selectors.test_case_list_for_user(user=UserFactory(username="viewer"), template=template)
    )
    exported = services.test_cases_export(cases)
    assert [json.loads(line)["name"] for line in exported.splitlines()] == ["new", "old"]
    again = services.test_cases_import(
        actor=UserFactory(username="sme"), template=template, content=exported.encode()
    )
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)
    assert AuditEvent.objects.filter(action="eval.cases_imported").count() == 2


def test_import_refuses_the_whole_file_with_every_problem_by_line(writer):
    template = writer.template
    lines = [
        _line(name="fine"),
        "{not json",
        _line(name="bad regex", assertions=[{"type": "regex", "pattern": "["}]),
        "[1, 2]",
        _line(name="fine"),
        json.dumps({"name": "extra", "variables": {"topic": "x"}, "colour": "red"}),
        _line(name="bad vars", variables={"topic": 5}),
    ]
    with pytest.raises(ValidationFailed, match="nothing was imported") as info:
        services.test_cases_import(
            actor=UserFactory(username="engineer"),
            template=template,
            content="\n".join(lines).encode(),
        )
    errors = info.value.extra
    assert [(e["line"], e["field"]) for e in errors] == [
        (2, ""),
        (3, "assertions[0].pattern"),
        (4, ""),
        (5, "name"),
        (6, "colour"),
        (7, "variables.topic"),
    ]
    assert "already used on line 1" in errors[3]["message"]
    assert info.value.field == "file"
    assert not Case.objects.exists()
    assert not AuditEvent.objects.filter(action="eval.cases_imported").exists()


def test_import_lists_at_most_100_errors(writer):
    content = "\n".join("{bad" for _ in range(150)).encode()
    with pytest.raises(ValidationFailed, match="150 problem") as info:
        services.test_cases_import(
            actor=UserFactory(username="engineer"), template=writer.template, content=content
        )
    assert len(info.value.extra) == 100 and info.value.extra[-1]["line"] == 100


def test_import_refuses_deeply_nested_lines_by_line(writer):
    content = (_line(name="fine") + "\n" + "[" * 100_000 + "\n").encode()
    with pytest.raises(ValidationFailed, match="nothing was imported") as info:
        services.test_cases_import(
            actor=UserFactory(username="engineer"), template=writer.template, content=content
        )
    [error] = info.value.extra
    assert error["line"] == 2 and "nested more than 64 levels deep" in error["message"]
    assert not Case.objects.exists()


def test_import_refuses_unreadable_files_and_viewers(writer):
    engineer = UserFactory(username="engineer")
    with pytest.raises(ValidationFailed, match="no test cases"):
        services.test_cases_import(actor=engineer, template=writer.template, content=b"\n\n")
    with pytest.raises(ValidationFailed, match="not UTF-8"):
        services.test_cases_import(
            actor=engineer, template=writer.template, content=b"\xff\xfe\x00"
        )
    with pytest.raises(PermissionDenied):
        services.test_cases_import(
            actor=UserFactory(username="viewer"),
            template=writer.template,
            content=_line().encode(),
        )


def test_tag_filter(writer):
    add_case(writer.template, "a", "x", CONTAINS, tags=["smoke"])
    add_case(writer.template, "b", "x", CONTAINS, tags=["slow"])
    add_case(writer.template, "c", "x", CONTAINS)
    viewer = UserFactory(username="viewer")
    names = lambda tags: [  # noqa: E731
        c.name
        for c in selectors.test_case_list_for_user(user=viewer, template=writer.template, tags=tags)
    ]
    assert names(None) == ["a", "b", "c"]
    assert names(["smoke"]) == ["a"]
    assert names(["smoke", "slow"]) == ["a", "b"]


def test_import_names_the_line_holding_a_number_past_4300_digits(writer):
    # json.loads raises a plain ValueError there, which the importer did not catch: a 500.
    huge = '{"name": "big", "variables": {"n": ' + "9" * 5000 + "}}"
    content = (_line(name="fine") + "\n" + huge + "\n").encode()
    with pytest.raises(ValidationFailed, match="nothing was imported") as info:
        services.test_cases_import(
            actor=UserFactory(username="engineer"), template=writer.template, content=content
        )
    [error] = info.value.extra
    assert error["line"] == 2 and "a number has more than 4,300 digits" in error["message"]
    assert not Case.objects.exists()
