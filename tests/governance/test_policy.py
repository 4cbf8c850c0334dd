import pytest

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, PermissionDenied, ValidationFailed
from apps.governance import services
from apps.governance.models import PolicyVersion
from apps.governance.rules import DEFAULT_RULES
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_every_change_is_a_new_audited_version(squad, policy):
    assert policy.number == 1 and policy.rules["pii"]["email"] == "redact"
    assert policy.rules["pii"]["iban"] == DEFAULT_RULES["pii"]["iban"]  # defaults filled in
    second = services.policy_update(
        actor=UserFactory(username="owner"),
        squad=squad,
        rules={**policy.rules, "max_input_chars": 500},
    )
    assert second.number == 2 and PolicyVersion.objects.filter(squad=squad).count() == 2
    events = AuditEvent.objects.filter(action="governance.policy_updated").order_by("id")
    assert [e.data["version"] for e in events] == [1, 2]
    assert events[1].data["changed"] == ["max_input_chars"]


def test_unchanged_rules_are_refused(squad, policy):
    with pytest.raises(Conflict, match="equal policy version 1"):
        services.policy_update(actor=UserFactory(username="owner"), squad=squad, rules=policy.rules)


def test_every_problem_is_named_with_its_field(squad):
    with pytest.raises(ValidationFailed) as info:
        services.policy_update(
            actor=UserFactory(username="owner"),
            squad=squad,
            rules={
                "pii": {"email": "shred", "fax": "flag"},
                "max_output_tokens": 0,
                "whole_word": "yes",
                "colour": "red",
            },
        )
    fields = {e["field"] for e in info.value.extra}
    assert fields == {"pii.email", "pii.fax", "max_output_tokens", "whole_word", "colour"}


@pytest.mark.parametrize("username", ["engineer", "sme", "viewer"])
def test_only_owners_and_compliance_edit(squad, username):
    with pytest.raises(PermissionDenied, match="governance policy in squad 'acme'"):
        services.policy_update(actor=UserFactory(username=username), squad=squad, rules={})


def test_api_reads_and_updates_the_policy(squad, api_as):
    body = api_as("viewer").call("GET", "/api/v1/squads/acme/governance-policy").json()
    assert body["version"] is None and body["rules"] == DEFAULT_RULES
    response = api_as("compliance").call(
        "PUT",
        "/api/v1/squads/acme/governance-policy",
        {"rules": {"pii": {"card": "block"}}, "note": "PCI"},
    )
    assert response.status_code == 200, response.content
    assert response.json()["version"] == 1 and response.json()["rules"]["pii"]["card"] == "block"
    bad = api_as("owner").call(
        "PUT", "/api/v1/squads/acme/governance-policy", {"rules": {"max_input_chars": -1}}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "max_input_chars"
    versions = api_as("sme").call("GET", "/api/v1/squads/acme/governance-policy/versions").json()
    assert [v["version"] for v in versions] == [1]


def test_policy_page_saves_a_version_and_shows_errors_inline(squad, client):
    client.login(username="owner", password="correct-horse-battery")
    page = client.get("/squads/acme/governance/")
    assert page.status_code == 200 and 'name="pii_email"' in page.content.decode()
    response = client.post(
        "/squads/acme/governance/",
        {"pii_email": "block", "blocked_terms": "falcon\nosprey", "whole_word": "on"},
    )
    assert response.status_code == 302
    policy = PolicyVersion.objects.get(squad=squad)
    assert policy.rules["pii"]["email"] == "block"
    assert policy.rules["blocked_terms"] == ["falcon", "osprey"]
    bad = client.post(
        "/squads/acme/governance/", {"max_input_chars": "lots"}, headers={"HX-Request": "true"}
    )
    assert bad.status_code == 422 and "max_input_chars" in bad.content.decode()


def test_test_bench_api_and_page(squad, policy, api_as, client):
    text = "Mail a@example.com about Project Falcon, call +44 20 7946 0958"
    body = (
        api_as("viewer")
        .call("POST", "/api/v1/squads/acme/governance-policy/test", {"text": text})
        .json()
    )
    assert body["policy_version"] == 1 and body["blocked"] is True
    assert [(f["rule"], f["type"], f["action"]) for f in body["findings"]] == [
        ("pii", "email", "redact"),
        ("pii", "phone", "flag"),
        ("blocked_term", "project falcon", "block"),
    ]
    assert body["redacted"] == "Mail [EMAIL_1] about Project Falcon, call +44 20 7946 0958"
    client.login(username="sme", password="correct-horse-battery")
    html = client.post(
        "/squads/acme/governance/test", {"text": text}, headers={"HX-Request": "true"}
    ).content.decode()
    assert '<mark title="pii email: redact" class="redact">a@example.com</mark>' in html
    assert "Mail [EMAIL_1] about" in html and "Blocked under policy v1" in html
