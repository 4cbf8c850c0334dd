import pytest

from apps.prompts import services as prompts
from apps.reviews.models import ReviewRequest
from tests.factories import UserFactory
from tests.reviews.factories import add_reviewers, approve, engineer_prompt, new_version

pytestmark = pytest.mark.django_db
SQUAD = "/api/v1/squads/acme"
V = f"{SQUAD}/prompts/support/versions"


@pytest.fixture
def template(squad):
    add_reviewers(squad)
    return engineer_prompt(squad)


def test_policy_get_and_put(squad, api_as):
    viewer, compliance = api_as("viewer"), api_as("compliance")
    policy = viewer.call("GET", f"{SQUAD}/approval-policy").json()
    assert policy == {
        "version": 1,
        "required_approvals": {"sme": 1, "compliance": 1},
        "protected_labels": ["production"],
        "changes_block": True,
        "threads_block": False,
        "min_eval_pass_rate": None,
        "updated_at": policy["updated_at"],
        "updated_by": None,
    }
    body = {
        "required_approvals": {"sme": 1, "compliance": 2},
        "protected_labels": ["production"],
        "changes_block": False,
        "threads_block": True,
        "min_eval_pass_rate": 0.8,
    }
    put = compliance.call("PUT", f"{SQUAD}/approval-policy", body)
    assert put.status_code == 200
    assert put.json()["threads_block"] is True
    assert put.json()["version"] == 2 and put.json()["updated_by"] == "compliance"
    assert viewer.call("PUT", f"{SQUAD}/approval-policy", body).status_code == 403
    assert api_as("outsider").call("GET", f"{SQUAD}/approval-policy").status_code == 404
    bad = compliance.call(
        "PUT", f"{SQUAD}/approval-policy", {**body, "required_approvals": {"viewer": 1}}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "required_approvals.viewer"


def test_open_decide_and_read_a_request(template, api_as):
    owner = UserFactory(username="owner")
    approve(template.latest_version)
    prompts.label_move(
        actor=owner, template=template, name="production", version=template.latest_version
    )
    new_version(template, 2)
    engineer, sme, compliance = api_as("engineer"), api_as("sme"), api_as("compliance")
    opened = engineer.call(
        "POST", f"{V}/2/review-requests", {"note": "new wording", "reviewers": ["sme2", "comp2"]}
    )
    assert opened.status_code == 201, opened.content
    body = opened.json()
    pk = body["id"]
    assert body["state"] == "open" and body["reviewers"] == ["comp2", "sme2"]
    assert body["missing"] == ["needs 1 compliance approval", "needs 1 SME approval"]
    assert body["policy"]["required_approvals"] == {"sme": 1, "compliance": 1}
    diff = body["label_diffs"][0]
    assert diff["label"] == "production" and diff["version"] == 1
    assert diff["diff"]["messages_changed"] == [0, 1] and diff["diff"]["breaking"] is True

    refused = compliance.call(
        "POST", f"{SQUAD}/review-requests/{pk}/decisions", {"verdict": "reject"}
    )
    assert refused.status_code == 422 and refused.json()["field"] == "comment"
    author = engineer.call(
        "POST", f"{SQUAD}/review-requests/{pk}/decisions", {"verdict": "approve"}
    )
    assert author.status_code == 403
    assert author.json()["detail"] == (
        "You wrote version 2 of 'support'; another reviewer must decide."
    )
    api_as("dual").call("POST", f"{SQUAD}/review-requests/{pk}/decisions", {"verdict": "approve"})
    decided = sme.call(
        "POST",
        f"{SQUAD}/review-requests/{pk}/decisions",
        {"verdict": "request_changes", "comment": "hmm"},
    )
    assert decided.json()["state"] == "changes_requested"
    # The blocking "request changes" closed the request.
    late = compliance.call(
        "POST", f"{SQUAD}/review-requests/{pk}/decisions", {"verdict": "approve"}
    )
    assert late.status_code == 409 and "save a new version" in late.json()["detail"]

    detail = api_as("viewer").call("GET", f"{SQUAD}/review-requests/{pk}").json()
    assert [(d["reviewer"], d["verdict"]) for d in detail["decisions"]] == [
        ("dual", "approve"),
        ("sme", "request_changes"),
    ]
    assert detail["decisions"][0]["roles"] == ["sme", "compliance"]
    assert len(detail["history"]) == 2 and detail["closed_at"] is not None

    listed = api_as("viewer").call("GET", f"{SQUAD}/review-requests?prompt=support").json()
    assert [(r["version"], r["state"]) for r in listed] == [
        (2, "changes_requested"),
        (1, "approved"),
    ]
    only = api_as("viewer").call("GET", f"{SQUAD}/review-requests?state=approved").json()
    assert [r["version"] for r in only] == [1]
    bad = api_as("viewer").call("GET", f"{SQUAD}/review-requests?state=maybe")
    assert bad.status_code == 422 and bad.json()["field"] == "state"
    assert api_as("viewer").call("GET", f"{SQUAD}/review-requests?prompt=nope").status_code == 404


def test_counted_roles_and_withdraw(template, api_as):
    engineer = api_as("engineer")
    pk = engineer.call("POST", f"{V}/1/review-requests", {}).json()["id"]
    for who in ("dual", "comp2"):
        api_as(who).call("POST", f"{SQUAD}/review-requests/{pk}/decisions", {"verdict": "approve"})
    detail = api_as("viewer").call("GET", f"{SQUAD}/review-requests/{pk}").json()
    assert detail["state"] == "approved"
    assert detail["counted"] == {"dual": "sme", "comp2": "compliance"}
    assert api_as("sme").call("POST", f"{SQUAD}/review-requests/{pk}/withdraw").status_code == 403
    withdrawn = engineer.call("POST", f"{SQUAD}/review-requests/{pk}/withdraw")
    assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "withdrawn"


def test_open_refusals(template, api_as):
    engineer = api_as("engineer")
    unknown = engineer.call("POST", f"{V}/1/review-requests", {"reviewers": ["nobody"]})
    assert unknown.status_code == 422 and "'nobody'" in unknown.json()["detail"]
    viewer = engineer.call("POST", f"{V}/1/review-requests", {"reviewers": ["viewer"]})
    assert viewer.status_code == 422 and viewer.json()["field"] == "reviewers"
    assert engineer.call("POST", f"{V}/9/review-requests", {}).status_code == 404
    assert api_as("sme").call("POST", f"{V}/1/review-requests", {}).status_code == 403
    assert api_as("outsider").call("POST", f"{V}/1/review-requests", {}).status_code == 404
    assert engineer.call("POST", f"{V}/1/review-requests", {}).status_code == 201
    again = engineer.call("POST", f"{V}/1/review-requests", {})
    assert again.status_code == 409 and "already has review request" in again.json()["detail"]
    assert ReviewRequest.objects.count() == 1
    assert api_as("outsider").call("GET", f"{SQUAD}/review-requests/1").status_code == 404
    assert api_as("viewer").call("GET", f"{SQUAD}/review-requests/99").status_code == 404


def test_inbox_lists_what_waits_for_me(template, api_as):
    engineer = api_as("engineer")
    first = engineer.call("POST", f"{V}/1/review-requests", {"reviewers": ["sme2"]}).json()
    new_version(template, 2, by="owner")
    second = api_as("owner").call("POST", f"{V}/2/review-requests", {}).json()
    # sme2 was named on #1, which #2 superseded, and holds a role #2 still misses.
    inbox = api_as("sme2").call("GET", "/api/v1/inbox").json()
    assert [(i["id"], i["reason"]) for i in inbox["items"]] == [(second["id"], "role")]
    assert ReviewRequest.objects.get(pk=first["id"]).state == "superseded"
    api_as("sme").call(
        "POST", f"{SQUAD}/review-requests/{second['id']}/decisions", {"verdict": "approve"}
    )
    # The SME slot is filled: SMEs are no longer waited for, compliance leads are.
    assert api_as("sme2").call("GET", "/api/v1/inbox").json()["total"] == 0
    comp = api_as("compliance").call("GET", "/api/v1/inbox").json()
    assert comp["counts"] == {"acme": 1}
    assert comp["items"][0] | {"created_at": None} == {
        "id": second["id"],
        "squad": "acme",
        "prompt": "support",
        "version": 2,
        "state": "open",
        "missing": ["needs 1 compliance approval"],
        "opened_by": "owner",
        "created_at": None,
        "reason": "role",
    }
    # dual (SME + compliance) would fill the compliance slot; the author never waits.
    assert api_as("dual").call("GET", "/api/v1/inbox").json()["total"] == 1
    assert api_as("owner").call("GET", "/api/v1/inbox").json()["total"] == 0
    assert api_as("viewer").call("GET", "/api/v1/inbox").json()["total"] == 0


def test_named_reviewers_see_requests_their_role_would_not_fill(template, api_as):
    api_as("engineer").call("POST", f"{V}/1/review-requests", {"reviewers": ["engineer2"]})
    items = api_as("engineer2").call("GET", "/api/v1/inbox").json()["items"]
    assert [i["reason"] for i in items] == ["named"]
    assert api_as("owner").call("GET", "/api/v1/inbox").json()["total"] == 0


def test_comments_through_the_api(template, api_as):
    sme, engineer = api_as("sme"), api_as("engineer")
    thread = sme.call("POST", f"{V}/1/comments", {"body": "Tone?", "message_index": 0, "line": 1})
    assert thread.status_code == 201, thread.content
    root = thread.json()["id"]
    reply = engineer.call("POST", f"{V}/1/comments", {"body": "Fixed in v2.", "parent": root})
    assert reply.json()["message_index"] == 0 and reply.json()["line"] == 1
    bad = sme.call("POST", f"{V}/1/comments", {"body": "x", "message_index": 7})
    assert bad.status_code == 422 and bad.json()["field"] == "message_index"
    assert api_as("viewer").call("POST", f"{V}/1/comments", {"body": "x"}).status_code == 403
    resolved = engineer.call("POST", f"{SQUAD}/comments/{root}/resolve", {"resolved": True})
    assert resolved.json()["resolved"] is True and resolved.json()["resolved_by"] == "engineer"
    listed = api_as("viewer").call("GET", f"{V}/1/comments").json()
    assert [(t["body"], [r["body"] for r in t["replies"]]) for t in listed] == [
        ("Tone?", ["Fixed in v2."])
    ]
    not_root = engineer.call("POST", f"{SQUAD}/comments/{reply.json()['id']}/resolve", {})
    assert not_root.status_code == 422
    assert api_as("outsider").call("GET", f"{V}/1/comments").status_code == 404


def test_notifications_through_the_api(template, api_as):
    api_as("engineer").call("POST", f"{V}/1/review-requests", {"reviewers": ["sme"]})
    sme = api_as("sme")
    listed = sme.call("GET", "/api/v1/notifications?unread=true").json()
    assert listed["unread"] == 1
    (item,) = listed["items"]
    assert item["kind"] == "review.requested" and item["squad"] == "acme"
    assert item["text"] == "engineer asks for your review of 'support' v1."
    other = api_as("compliance").call("POST", "/api/v1/notifications/read", {"ids": [item["id"]]})
    assert other.json() == {"marked": 0}  # not theirs
    assert sme.call("POST", "/api/v1/notifications/read", {}).json() == {"marked": 1}
    assert sme.call("GET", "/api/v1/notifications?unread=true").json()["items"] == []
    assert sme.call("GET", "/api/v1/notifications").json()["items"][0]["read"] is True
