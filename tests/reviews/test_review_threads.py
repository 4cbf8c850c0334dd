"""PR-grade review: the policy option that open comment threads block approval (derived
state, service, gate, audit), and the request page's diffs — clickable line numbers,
threads under their line, "changes since your last review", and the diff that stays once
production points at the reviewed version."""

import re

import pytest
from django.test import Client

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict
from apps.prompts import services as prompts
from apps.reviews.models import ReviewRequest
from apps.reviews.policy import Vote, derive
from apps.reviews.services import approvals as services
from tests.factories import PASSWORD, UserFactory
from tests.reviews.factories import approve, engineer_prompt, new_version, open_review

pytestmark = pytest.mark.django_db
State = ReviewRequest.State
POLICY = {"required_approvals": {"sme": 1}, "changes_block": True}


def u(name: str):
    return UserFactory(username=name)


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_derive_open_threads_block_only_under_the_option():
    votes = [Vote(2, "approve", ("sme",))]
    assert derive(policy=POLICY, author_id=1, votes=votes, open_threads=2).state == State.APPROVED
    blocked = derive(
        policy={**POLICY, "threads_block": True}, author_id=1, votes=votes, open_threads=2
    )
    assert blocked.state == State.OPEN
    assert blocked.missing == ["2 open comment threads to resolve"]
    both = derive(policy={**POLICY, "threads_block": True}, author_id=1, votes=[], open_threads=1)
    assert both.missing == ["needs 1 SME approval", "1 open comment thread to resolve"]
    resolved = derive(policy={**POLICY, "threads_block": True}, author_id=1, votes=votes)
    assert resolved.state == State.APPROVED


@pytest.fixture
def blocking(squad):
    services.approval_policy_update(actor=u("owner"), squad=squad, threads_block=True)
    template = engineer_prompt(squad)
    return template


def test_open_thread_keeps_a_request_from_approval_until_resolved(blocking):
    version = blocking.latest_version
    thread = services.comment_add(
        actor=u("sme"), version=version, body="Is 'tier' right?", message_index=0, line=1
    )
    review = open_review(version)
    assert review.policy["threads_block"] is True
    for name in ("sme", "compliance"):
        review = services.review_decide(actor=u(name), review=review, verdict="approve")
    assert review.state == State.OPEN
    assert review.missing == ["1 open comment thread to resolve"]
    with pytest.raises(Conflict, match="is not approved"):
        prompts.label_move(actor=u("owner"), template=blocking, name="production", version=version)

    services.comment_resolve(actor=u("engineer"), comment=thread)
    review.refresh_from_db()
    assert review.state == State.APPROVED and review.missing == []
    event = AuditEvent.objects.filter(action="review.state_changed").latest("pk")
    assert event.data["state_before"] == "open" and event.data["state"] == "approved"
    assert event.data["reason"] == "comment threads"

    # A new thread on the approved version opens the request again, and reopening the
    # resolved one counts too.
    services.comment_add(actor=u("compliance"), version=version, body="One more thing.")
    review.refresh_from_db()
    assert review.state == State.OPEN and review.missing == ["1 open comment thread to resolve"]
    services.comment_resolve(actor=u("engineer"), comment=thread, resolved=False)
    review.refresh_from_db()
    assert review.missing == ["2 open comment threads to resolve"]


def test_gate_refuses_an_approved_request_with_open_threads(blocking):
    """The gate reads the threads itself: an approval derived before a thread appeared
    (here written directly, as a stale state would be) still cannot move production."""
    version = blocking.latest_version
    approve(version)
    services.comment_add(actor=u("sme"), version=version, body="Wait.")
    ReviewRequest.objects.filter(version=version).update(state=State.APPROVED, missing=[])
    with pytest.raises(Conflict, match="1 open comment thread") as exc:
        prompts.label_move(actor=u("owner"), template=blocking, name="production", version=version)
    assert exc.value.extra["open_threads"] == 1


def test_without_the_option_threads_do_not_block(squad):
    template = engineer_prompt(squad)
    version = template.latest_version
    services.comment_add(actor=u("sme"), version=version, body="Nit.")
    assert approve(version).state == State.APPROVED
    prompts.label_move(actor=u("owner"), template=template, name="production", version=version)


def test_policy_page_sets_the_option(squad):
    response = _client("owner").post(
        "/squads/acme/approval-policy",
        {
            "required_sme": "1",
            "required_compliance": "1",
            "protected_labels": "production",
            "changes_block": "on",
            "threads_block": "on",
        },
    )
    assert response.status_code == 302
    event = AuditEvent.objects.filter(action="review.policy_updated").latest("pk")
    assert event.data["changed"] == ["threads_block"]
    page = _client("viewer").get("/squads/acme/approval-policy").content.decode()
    assert "must all be resolved before approval" in page


# --- the request page ---------------------------------------------------------------------


def _rows_of(page: str, table_id: str) -> str:
    start = page.index(f'id="{table_id}"')
    return page[start : page.index("</table>", start)]


def test_line_numbers_link_to_an_anchored_comment_and_threads_show_under_their_line(squad):
    template = engineer_prompt(squad)
    approve(template.latest_version)
    prompts.label_move(
        actor=u("owner"), template=template, name="production", version=template.latest_version
    )
    v2 = new_version(template, 2)
    review = open_review(v2)
    thread = services.comment_add(
        actor=u("sme"), version=v2, body="Why 'Version 2'?", message_index=1, line=1
    )
    url = f"/squads/acme/reviews/{review.pk}"
    page = _client("compliance").get(url).content.decode()
    # Every line of v2 in the diff against production is a link to comment on it.
    diff = _rows_of(page, "diff-production-m2")
    assert 'aria-label="Comment on message 2, line 1"' in diff
    assert f'href="{url}?comment_on=2.1#new-comment"' in diff
    # The thread sits right after line 1's row, in the diff and in the content.
    assert re.search(
        r'data-line="1"[^<]*>1</a></td>.*?</tr>\s*<tr class="inline-thread-row">'
        r".*?Why &#x27;Version 2&#x27;\?",
        diff,
        re.S,
    )
    content = _rows_of(page, "message-2")
    assert f'id="inline-content-{thread.pk}"' in content
    # No dropdown and typed line number any more; the JS form template is on the page.
    assert 'name="message_index"' in page and "<select" not in page.split('id="comments"')[1]
    assert 'id="line-comment-template"' in page and 'src="/static/js/review.js"' in page
    # Without JavaScript the link opens the page's form anchored on that line.
    anchored = _client("compliance").get(f"{url}?comment_on=2.2").content.decode()
    assert (
        '<input type="hidden" name="message_index" value="2">'
        '<input type="hidden" name="line" value="2">' in anchored
    )
    assert "On message 2, line 2" in anchored
    # A viewer cannot comment: plain numbers.
    assert (
        "line-comment" not in _client("viewer").get(url).content.decode().split('id="comments"')[0]
    )


def test_anchored_comment_posted_from_the_page_lands_on_its_line(squad):
    template = engineer_prompt(squad)
    v2 = new_version(template, 2)
    review = open_review(v2)
    response = _client("sme").post(
        "/squads/acme/prompts/support/v2/comments",
        {"body": "Line two.", "message_index": "2", "line": "2", "review": str(review.pk)},
    )
    assert response.status_code == 302 and response["Location"].startswith(
        f"/squads/acme/reviews/{review.pk}"
    )
    thread = v2.comments.get()
    assert (thread.message_index, thread.line, thread.request_id) == (1, 2, review.pk)


def test_rereview_diffs_against_the_version_where_changes_were_requested(squad):
    template = engineer_prompt(squad)
    v1 = template.latest_version
    approve(v1)
    prompts.label_move(actor=u("owner"), template=template, name="production", version=v1)
    v2 = new_version(template, 2)
    services.review_decide(
        actor=u("compliance"), review=open_review(v2), verdict="request_changes", comment="Tone."
    )
    v3 = new_version(template, 3)
    review = open_review(v3)
    url = f"/squads/acme/reviews/{review.pk}"
    page = _client("compliance").get(url).content.decode()
    assert "Changes since your last review (v2 → v3)" in page
    assert 'Against <span class="badge label protected">production</span> (v1 → v3)' in page
    # Someone who never reviewed this prompt sees the diff against the last version
    # where changes were requested.
    other = _client("owner").get(url).content.decode()
    assert "Changes since changes were requested (v2 → v3)" in other

    # Once production points at v3, the diff against v1 stays on the page.
    for name in ("sme", "compliance"):
        review = services.review_decide(actor=u(name), review=review, verdict="approve")
    prompts.label_move(actor=u("owner"), template=template, name="production", version=v3)
    after = _client("sme").get(url).content.decode()
    assert 'Against <span class="badge label protected">production</span> (v1 → v3)' in after
    assert "production now points at v3; this is the diff against v1" in after
    assert 'id="diff-production-m2"' in after
    # The API says the same: compared with v1, where production pointed before.
    from apps.squads import services as squads
    from tests.conftest import ApiClient

    _, secret = squads.api_token_create(actor=u("sme"), name="t")
    body = ApiClient(secret).call("GET", f"/api/v1/squads/acme/review-requests/{review.pk}").json()
    entry = body["label_diffs"][0]
    assert (entry["version"], entry["compared_with"]) == (3, 1)
    assert entry["diff"]["same_version"] is True and entry["diff"]["messages_changed"] == [0, 1]
