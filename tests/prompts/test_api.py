import pytest

from apps.audit.models import AuditEvent
from apps.prompts import services
from apps.prompts.models import Label, PromptTemplate, PromptVersion
from tests.factories import UserFactory
from tests.prompts.factories import MESSAGES, SCHEMA, content, make_prompt
from tests.reviews.factories import approve

pytestmark = pytest.mark.django_db
BASE = "/api/v1/squads/acme/prompts"


@pytest.fixture
def prompt(squad):
    owner = UserFactory(username="owner")
    template = make_prompt(squad, owner)
    approve(template.latest_version)
    services.label_move(
        actor=owner, template=template, name="production", version=template.latest_version
    )
    return template


def _v2(**over):
    messages = [*MESSAGES, {"role": "user", "content": "Answer in {{ lang }}."}]
    schema = {
        **SCHEMA,
        "properties": {**SCHEMA["properties"], "lang": {"type": "string"}},
        "required": [*SCHEMA["required"], "lang"],
    }
    return {"messages": messages, "input_schema": schema, "commit_message": "add lang", **over}


def test_ci_pipeline_flow(squad, api_as):
    """Everything the UI does, from a CI token: create, version, list, diff, label, fetch."""
    ci = api_as("engineer")
    created = ci.call(
        "POST",
        BASE,
        {
            "slug": "triage",
            "description": "Ticket triage",
            "tags": ["support"],
            "first_version": {**content(), "model": {"temperature": 0.1, "seed": 7}},
        },
    )
    assert created.status_code == 201, created.content
    assert created.json()["latest_version"] == 1
    v2 = ci.call("POST", f"{BASE}/triage/versions", _v2())
    assert v2.status_code == 201 and v2.json()["number"] == 2 and v2.json()["parent"] == 1
    assert v2.json()["model"]["target"] == "local"  # defaults filled in
    versions = ci.call("GET", f"{BASE}/triage/versions").json()
    assert [v["number"] for v in versions] == [2, 1]
    diff = ci.call("GET", f"{BASE}/triage/diff?from_version=1&to_version=2").json()
    assert diff["breaking"] is True
    assert diff["schema_changes"][0]["change"] == "required variable added"
    staged = ci.call("PUT", f"{BASE}/triage/labels/staging", {"version": 2, "note": "try it"})
    assert staged.status_code == 200 and staged.json()["history"][0]["note"] == "try it"
    fetched = ci.call("GET", f"{BASE}/triage?label=staging")
    assert fetched.json()["version"] == 2 and fetched.json()["label"] == "staging"
    listed = ci.call("GET", f"{BASE}?tag=support&label=staging&author=engineer").json()
    assert [t["slug"] for t in listed] == ["triage"]
    assert ci.call("GET", f"{BASE}?label=production").json() == []
    actions = list(
        AuditEvent.objects.filter(action__startswith="prompt.").values_list("action", flat=True)
    )
    assert actions == [
        "prompt.template_created",
        "prompt.version_created",
        "prompt.version_created",
        "prompt.label_moved",
    ]


def test_versions_are_immutable_and_identical_content_is_refused(prompt, api_as):
    ci = api_as("engineer")
    same = ci.call("POST", f"{BASE}/support/versions", content(commit_message="again"))
    assert same.status_code == 409
    assert "identical to version 1" in same.json()["detail"]
    assert PromptVersion.objects.filter(template=prompt).count() == 1
    # There is no operation that edits a version: PUT/PATCH on it does not exist.
    assert (
        ci.call("PATCH", f"{BASE}/support/versions/1", {"commit_message": "x"}).status_code == 405
    )


def test_refused_first_version_leaves_no_template(squad, api_as):
    response = api_as("engineer").call(
        "POST",
        BASE,
        {
            "slug": "broken",
            "first_version": content(messages=[{"role": "user", "content": "{{ x"}]),
        },
    )
    assert response.status_code == 422
    assert "line 1" in response.json()["detail"]
    assert not PromptTemplate.objects.filter(slug="broken").exists()
    assert not AuditEvent.objects.filter(action="prompt.template_created").exists()


def test_fetch_etag_and_304(prompt, api_as):
    client = api_as("viewer")
    first = client.call("GET", f"{BASE}/support?label=production")
    assert first.status_code == 200
    etag = first["ETag"]
    assert etag.startswith('"') and first["Cache-Control"] == "private, no-cache"
    body = first.json()
    assert body["version"] == 1 and body["messages"] == MESSAGES
    assert body["content_hash"] == prompt.latest_version.content_hash
    client.headers["If-None-Match"] = etag
    again = client.call("GET", f"{BASE}/support")  # label defaults to production
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag
    client.headers["If-None-Match"] = 'W/"other", ' + etag
    assert client.call("GET", f"{BASE}/support").status_code == 304
    client.headers["If-None-Match"] = '"stale"'
    assert client.call("GET", f"{BASE}/support").status_code == 200
    by_number = client.call("GET", f"{BASE}/support?version=1")
    assert by_number.json()["label"] is None and by_number.json()["version"] == 1


def test_label_move_invalidates_the_cached_fetch(prompt, api_as):
    owner = UserFactory(username="owner")
    reader = api_as("viewer")
    before = reader.call("GET", f"{BASE}/support")
    assert before.json()["version"] == 1
    v2 = services.prompt_version_create(actor=owner, template=prompt, **_v2())
    approve(v2)
    services.label_move(actor=owner, template=prompt, name="production", version=v2)
    after = reader.call("GET", f"{BASE}/support")
    assert after.json()["version"] == 2 and after["ETag"] != before["ETag"]
    # Roll back = move to an earlier version.
    rolled = api_as("owner").call("PUT", f"{BASE}/support/labels/production", {"version": 1})
    assert [h["to_version"] for h in rolled.json()["history"]] == [1, 2, 1]
    assert reader.call("GET", f"{BASE}/support").json()["version"] == 1


def test_fetch_query_counts(
    prompt, api_as, django_assert_num_queries, django_assert_max_num_queries
):
    from django.core.cache import cache

    client = api_as("viewer")
    client.call("GET", "/api/v1/me")  # the token's first use records last_used_at
    cache.clear()
    # Cold: token, the label with its version and squad, the permission set. (Once a
    # minute per token a last-used write comes on top.)
    with django_assert_max_num_queries(3):
        assert client.call("GET", f"{BASE}/support").status_code == 200
    # Warm: nothing for the prompt, the token or the permissions.
    with django_assert_num_queries(0):
        assert client.call("GET", f"{BASE}/support").status_code == 200
    with django_assert_num_queries(0):
        assert (
            client.call(
                "POST",
                f"{BASE}/support/render",
                {"variables": {"customer": {"name": "A"}, "question": "q"}},
            ).status_code
            == 200
        )


def test_fetch_errors(prompt, api_as):
    viewer = api_as("viewer")
    outsider = api_as("outsider")
    assert viewer.call("GET", f"{BASE}/nope").json()["detail"] == (
        "Prompt 'nope' not found in squad 'acme'."
    )
    assert viewer.call("GET", f"{BASE}/support?label=staging").json()["field"] == "label"
    assert viewer.call("GET", f"{BASE}/support?version=9").status_code == 404
    both = viewer.call("GET", f"{BASE}/support?version=1&label=production")
    assert both.status_code == 422
    # Outsiders cannot tell a hidden prompt from a missing one.
    hidden = outsider.call("GET", f"{BASE}/support")
    missing = outsider.call("GET", f"{BASE}/nope")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == {"detail": "Squad 'acme' not found."} == missing.json()


def test_render_endpoint_lists_every_schema_error(prompt, api_as):
    response = api_as("viewer").call(
        "POST",
        f"{BASE}/support/render",
        {"variables": {"customer": {"name": ""}, "items": ["x"]}},
    )
    assert response.status_code == 422
    paths = sorted(e["path"] for e in response.json()["errors"])
    assert paths == ["$", "$.customer.name", "$.items[0]"]
    ok = api_as("viewer").call(
        "POST",
        f"{BASE}/support/render?version=1",
        {"variables": {"customer": {"name": "Ada", "tier": "pro"}, "question": "Hi?"}},
    )
    assert ok.json()["messages"][0]["content"] == "You help Ada (pro)."


def test_protected_labels_are_part_of_the_approval_policy(prompt, api_as):
    engineer = api_as("engineer")
    assert engineer.call("PUT", f"{BASE}/support/labels/canary", {"version": 1}).status_code == 200
    # Which labels are protected is edited with the approval policy, not the squad.
    owner = api_as("owner")
    moved = owner.call(
        "PATCH", "/api/v1/squads/acme", {"protected_labels": ["production", "canary"]}
    )
    assert moved.status_code == 422 and "protected_labels" in moved.json()["detail"]
    policy = owner.call("GET", "/api/v1/squads/acme/approval-policy").json()
    updated = owner.call(
        "PUT",
        "/api/v1/squads/acme/approval-policy",
        {**policy, "protected_labels": ["production", "canary"]},
    )
    assert updated.json()["protected_labels"] == ["canary", "production"]
    assert owner.call("GET", "/api/v1/squads/acme").json()["protected_labels"] == [
        "canary",
        "production",
    ]
    v2 = services.prompt_version_create(
        actor=UserFactory(username="owner"), template=prompt, **_v2()
    )
    refused = engineer.call("PUT", f"{BASE}/support/labels/canary", {"version": v2.number})
    assert refused.status_code == 409 and "Label 'canary' is protected" in refused.json()["detail"]
    # Viewers may not move labels at all.
    viewer = api_as("viewer")
    assert (
        viewer.call("PUT", f"{BASE}/support/labels/production", {"version": 1}).status_code == 403
    )
    bad = owner.call(
        "PUT", "/api/v1/squads/acme/approval-policy", {**policy, "protected_labels": ["Bad Name"]}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "protected_labels"


def test_label_move_refusals(prompt, api_as):
    owner = api_as("owner")
    again = owner.call("PUT", f"{BASE}/support/labels/production", {"version": 1})
    assert again.status_code == 409 and "already points at version 1" in again.json()["detail"]
    assert owner.call("PUT", f"{BASE}/support/labels/production", {"version": 7}).status_code == 404
    bad = owner.call("PUT", f"{BASE}/support/labels/Not%20Ok", {"version": 1})
    assert bad.status_code == 422
    assert Label.objects.count() == 1


def test_check_endpoint_reports_without_saving(squad, api_as):
    response = api_as("viewer").call(
        "POST",
        f"{BASE}/check",
        {
            "messages": [{"role": "user", "content": "{{ a }} {{ b"}],
            "input_schema": {"type": "object"},
        },
    )
    body = response.json()
    assert body["ok"] is False and "line 1" in body["errors"][0]["message"]
    assert PromptTemplate.objects.count() == 0


def test_template_metadata_update_and_duplicate_slug(prompt, api_as):
    ci = api_as("engineer")
    assert ci.call("PATCH", f"{BASE}/support", {"tags": ["b", "a", "a"]}).json()["tags"] == [
        "a",
        "b",
    ]
    dup = ci.call("POST", BASE, {"slug": "support"})
    assert dup.status_code == 409
    bad = ci.call("POST", BASE, {"slug": "x" * 81})
    assert bad.status_code == 422
    extra = ci.call("POST", f"{BASE}/support/versions", _v2(model={"temperature": 0.5, "beams": 3}))
    assert extra.status_code == 422 and "beams" in extra.content.decode()


def test_fast_fetch_view_speaks_like_the_api(prompt, api_as):
    from django.test import Client

    anonymous = Client().get(f"{BASE}/support")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert "Authentication required" in anonymous.json()["detail"]
    viewer = api_as("viewer")
    for raw in ("two", "", "9223372036854775808"):
        bad = viewer.call("GET", f"{BASE}/support?version={raw}")
        assert bad.status_code == 422 and bad.json()["field"] == "version"
    # Other methods on the same path still reach the ninja API.
    assert viewer.call("DELETE", f"{BASE}/support").status_code == 405
    assert api_as("engineer").call("PATCH", f"{BASE}/support", {"tags": ["x"]}).status_code == 200
