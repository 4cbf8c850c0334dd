import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.evals import services
from apps.evals.models import EvalRun, TestCase
from apps.reviews.models import ApprovalPolicy
from apps.reviews.services import approvals
from tests.evals.conftest import add_case
from tests.factories import PASSWORD, UserFactory
from tests.reviews.factories import open_review

pytestmark = pytest.mark.django_db
PAGE = "/squads/acme/evals/prompts/writer/"
CONTAINS = [{"type": "contains", "value": "tides"}]


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_cases_page_add_edit_delete(writer):
    client = _client("sme")
    add = {
        "name": "tides",
        "variables": '{"topic": "tides"}',
        "assertions": json.dumps(CONTAINS),
        "tags": "smoke, core",
    }
    assert client.post(PAGE, add).status_code == 302
    case = TestCase.objects.get()
    assert case.tags == ["core", "smoke"]
    page = client.get(PAGE)
    assert page.status_code == 200 and b"tides" in page.content and b"Add a case" in page.content
    assert b"Run an eval" not in page.content  # SMEs write cases, they do not run evals
    edit_url = f"/squads/acme/evals/prompts/writer/cases/{case.pk}/edit"
    assert client.get(edit_url).status_code == 200
    refused = client.post(edit_url, {**add, "assertions": "[{"})
    assert refused.status_code == 422 and b"Assertions is not valid JSON" in refused.content
    bad = client.post(edit_url, {**add, "assertions": '[{"type": "regex", "pattern": "("}]'})
    assert bad.status_code == 422 and b"assertions[0].pattern" in bad.content
    assert client.post(edit_url, {**add, "name": "tides 2"}).status_code == 302
    assert TestCase.objects.get().name == "tides 2"
    other = add_case(writer.template, "other", "x", CONTAINS)
    delete = client.post(f"/squads/acme/evals/prompts/writer/cases/{case.pk}/delete")
    assert delete.status_code == 302 and list(TestCase.objects.all()) == [other]
    swapped = client.post(
        f"/squads/acme/evals/prompts/writer/cases/{other.pk}/delete", headers={"HX-Request": "true"}
    )
    assert swapped.status_code == 200 and swapped.content == b""
    assert not TestCase.objects.exists()


def test_viewers_read_but_cannot_write(writer):
    add_case(writer.template, "tides", "tides", CONTAINS)
    client = _client("viewer")
    page = client.get(PAGE)
    assert page.status_code == 200 and b"Add a case" not in page.content
    assert (
        client.post(PAGE, {"name": "x", "variables": "{}", "assertions": "[]"}).status_code == 403
    )
    assert _client("outsider").get(PAGE).status_code == 404


def test_import_errors_by_line_and_export(writer):
    client = _client("engineer")
    bad = b'{"name": "a", "variables": {"topic": "x"}}\n{oops\n'
    refused = client.post(
        "/squads/acme/evals/prompts/writer/cases/import",
        {"file": SimpleUploadedFile("c.jsonl", bad)},
    )
    assert refused.status_code == 422
    assert b"line 2" in refused.content and b"nothing was imported" in refused.content
    good = b'{"name": "a", "variables": {"topic": "x"}, "assertions": []}\n'
    done = client.post(
        "/squads/acme/evals/prompts/writer/cases/import",
        {"file": SimpleUploadedFile("c.jsonl", good)},
    )
    assert done.status_code == 200 and b"1 added" in done.content
    exported = client.get("/squads/acme/evals/prompts/writer/cases/export.jsonl")
    assert json.loads(exported.content)["name"] == "a"


def test_unparseable_form_input_is_a_422_not_a_500(writer, fake_server):
    add_case(writer.template, "tides", "tides", CONTAINS)
    run = services.eval_run_create(actor=UserFactory(username="engineer"), version=writer)
    client = _client("engineer")
    # "²".isdigit() is true, but int("²") raises
    assert client.get(f"/squads/acme/evals/compare?base=²&head={run.pk}").status_code == 422
    start = client.post("/squads/acme/evals/prompts/writer/runs", {"version": "²"})
    assert start.status_code == 422 and b"Choose a version" in start.content
    # 25 digits: no database integer holds it (SQLite raised OverflowError, PostgreSQL a
    # DataError)
    huge = "9" * 25
    assert client.get(f"/squads/acme/evals/compare?base={huge}&head={run.pk}").status_code == 422
    start = client.post("/squads/acme/evals/prompts/writer/runs", {"version": huge})
    assert start.status_code == 422
    # json.loads raises RecursionError, not JSONDecodeError, on deep nesting
    deep = {"name": "deep", "variables": '{"topic": "x"}', "assertions": "[" * 100_000}
    refused = client.post(PAGE, deep)
    assert (
        refused.status_code == 422
        and b"Assertions is nested more than 64 levels deep" in refused.content
    )
    refused = client.post(PAGE, {**deep, "assertions": "[]", "variables": '{"a": ' * 50_000})
    assert (
        refused.status_code == 422
        and b"Variables is nested more than 64 levels deep" in refused.content
    )
    assert not TestCase.objects.filter(name="deep").exists()


def test_start_run_page_progress_and_results(writer, fake_server):
    add_case(writer.template, "tides", "tides", CONTAINS)
    add_case(writer.template, "moon", "the moon", CONTAINS)
    client = _client("engineer")
    started = client.post(f"{PAGE.rstrip('/')}/runs", {"version": "1", "target": "", "tags": ""})
    run = EvalRun.objects.get()
    assert (
        started.status_code == 302 and started["Location"] == f"/squads/acme/evals/runs/{run.pk}/"
    )
    polled = client.get(
        started["Location"], headers={"HX-Request": "true", "HX-Target": "progress"}
    )
    assert b"every 2s" in polled.content and "HX-Trigger" not in polled
    services.eval_run_execute(run_id=run.pk)
    polled = client.get(
        started["Location"], headers={"HX-Request": "true", "HX-Target": "progress"}
    )
    assert b"every 2s" not in polled.content and "eval-finished" in polled["HX-Trigger"]
    page = client.get(started["Location"])
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="eval-fail"' in html and 'class="eval-pass"' in html
    assert "&#x27;tides&#x27; not found" in html
    failing = client.get(started["Location"] + "?failing=1").content.decode()
    assert "moon" in failing and "result-1" not in failing
    refused = client.post(f"{PAGE.rstrip('/')}/runs", {"version": "1", "tags": "nope"})
    assert refused.status_code == 422 and b"no test cases with any of the tags" in refused.content


def test_cancel_and_compare_pages(writer, fake_server):
    add_case(writer.template, "tides", "tides", CONTAINS)
    engineer = UserFactory(username="engineer")
    first = services.eval_run_create(actor=engineer, version=writer)
    services.eval_run_execute(run_id=first.pk)
    TestCase.objects.update(assertions=[{"type": "contains", "value": "nope"}])
    second = services.eval_run_create(actor=engineer, version=writer)
    services.eval_run_execute(run_id=second.pk)
    client = _client("viewer")
    page = client.get(f"/squads/acme/evals/compare?base={first.pk}&head={second.pk}")
    assert page.status_code == 200
    html = page.content.decode()
    regressions = html[html.index('id="regressions"') : html.index('id="fixes"')]
    assert "tides" in regressions and "nope" in regressions
    assert client.get("/squads/acme/evals/compare?base=x").status_code == 422
    third = services.eval_run_create(actor=engineer, version=writer)
    assert client.post(f"/squads/acme/evals/runs/{third.pk}/cancel").status_code == 403
    assert _client("engineer").post(f"/squads/acme/evals/runs/{third.pk}/cancel").status_code == 302
    assert EvalRun.objects.get(pk=third.pk).status == "cancelled"


def test_review_request_page_shows_the_eval_status(writer, squad, fake_server):
    add_case(writer.template, "tides", "tides", CONTAINS)
    add_case(writer.template, "moon", "the moon", CONTAINS)
    approvals.approval_policy_update(
        actor=UserFactory(username="owner"), squad=squad, min_eval_pass_rate=0.75
    )
    review = open_review(writer)
    url = f"/squads/acme/reviews/{review.pk}"
    before = _client("sme").get(url).content.decode()
    assert "gate not met" in before and "No finished run yet" in before
    run = services.eval_run_create(actor=UserFactory(username="engineer"), version=writer)
    services.eval_run_execute(run_id=run.pk)
    after = _client("sme").get(url).content.decode()
    assert f"/squads/acme/evals/runs/{run.pk}/" in after and "50% (1 of 2)" in after
    assert "at least 75%" in after and "gate not met" in after
    approvals.approval_policy_update(
        actor=UserFactory(username="owner"), squad=squad, min_eval_pass_rate=0.5
    )
    assert "gate met" in _client("sme").get(url).content.decode()


def test_approval_policy_page_edits_the_minimum(squad):
    client = _client("owner")
    form = {"required_sme": "1", "required_compliance": "1", "protected_labels": "production"}
    assert (
        client.post(
            "/squads/acme/approval-policy", {**form, "min_eval_pass_rate": "0.9"}
        ).status_code
        == 302
    )
    assert ApprovalPolicy.objects.get(squad=squad).min_eval_pass_rate == 0.9
    assert b'value="0.9"' in client.get("/squads/acme/approval-policy").content
    refused = client.post("/squads/acme/approval-policy", {**form, "min_eval_pass_rate": "90%"})
    assert refused.status_code == 422 and b"from 0 to 1" in refused.content
    refused = client.post("/squads/acme/approval-policy", {**form, "min_eval_pass_rate": "1.5"})
    assert refused.status_code == 422
    client.post("/squads/acme/approval-policy", form)  # no field: left as it is
    assert ApprovalPolicy.objects.get(squad=squad).min_eval_pass_rate == 0.9
    client.post("/squads/acme/approval-policy", {**form, "min_eval_pass_rate": ""})
    assert ApprovalPolicy.objects.get(squad=squad).min_eval_pass_rate is None


def test_prompt_page_links_to_the_cases(writer):
    page = _client("viewer").get("/squads/acme/prompts/writer/")
    assert b'href="/squads/acme/evals/prompts/writer/"' in page.content


def _queries(client, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_pages_cost_the_same_with_more_cases_and_runs(writer, fake_server):
    engineer = UserFactory(username="engineer")
    client = _client("engineer")

    def grow(n: int) -> int:
        for _ in range(n):
            add_case(writer.template, f"case {TestCase.objects.count()}", "x", CONTAINS)
        run = services.eval_run_create(actor=engineer, version=writer)
        services.eval_run_execute(run_id=run.pk)
        return run.pk

    small = grow(2)
    _queries(client, PAGE)  # warm the session and permission caches
    counts = (_queries(client, PAGE), _queries(client, f"/squads/acme/evals/runs/{small}/"))
    big = grow(6)
    assert _queries(client, PAGE) == counts[0]
    assert _queries(client, f"/squads/acme/evals/runs/{big}/") == counts[1]


def test_admin_lists_runs_read_only(writer, admin_client):
    add_case(writer.template, "tides", "tides", CONTAINS)
    run = services.eval_run_create(actor=UserFactory(username="engineer"), version=writer)
    assert admin_client.get("/admin/evals/evalrun/").status_code == 200
    assert admin_client.get(f"/admin/evals/evalrun/{run.pk}/change/").status_code == 200
    assert admin_client.get("/admin/evals/testcase/add/").status_code == 403


@pytest.mark.parametrize("field", ["variables", "assertions"])
def test_a_number_past_4300_digits_in_a_case_form_is_a_422_naming_the_field(writer, field):
    # json.loads raises a plain ValueError (not JSONDecodeError) there: this was a 500.
    client = _client("sme")
    add = {"name": "big", "variables": '{"topic": "x"}', "assertions": json.dumps(CONTAINS)}
    huge = {"variables": '{"n": ' + "9" * 5000 + "}", "assertions": "[" + "9" * 5000 + "]"}
    label = field.capitalize()
    refused = client.post(PAGE, {**add, field: huge[field]})
    assert refused.status_code == 422
    assert f"{label} is not usable JSON: a number has more than 4,300 digits" in (
        refused.content.decode()
    )
    assert not TestCase.objects.exists()
    case = add_case(writer.template, "tides", "tides", CONTAINS)
    edit_url = f"/squads/acme/evals/prompts/writer/cases/{case.pk}/edit"
    refused = client.post(edit_url, {**add, field: huge[field]})
    assert refused.status_code == 422 and b"more than 4,300 digits" in refused.content
    case.refresh_from_db()
    assert case.name == "tides"
