"""The approval pages: request review from a version, the request page (diff, policy,
decisions with htmx), comments, the policy page, inbox and notifications, the gate's
message on the prompt page's label form, and the inbox's fixed query count."""

import re

import pytest
from django.test import Client

from apps.prompts import services as prompts
from apps.prompts.models import Label, PromptTemplate, PromptVersion
from apps.reviews.models import ApprovalPolicy, Notification, ReviewComment, ReviewRequest
from apps.reviews.services import approvals as services
from tests.factories import PASSWORD, UserFactory
from tests.reviews.factories import approve, engineer_prompt, new_version, open_review

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
State = ReviewRequest.State


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def _user(username: str):
    return UserFactory(username=username)


@pytest.fixture
def template(squad) -> PromptTemplate:
    return engineer_prompt(squad)


def _body(response) -> str:
    return response.content.decode()


# --- requesting a review from the prompt pages -------------------------------------------


def test_prompt_and_version_pages_load_the_review_panels(template):
    client = _client("viewer")
    detail = _body(client.get("/squads/acme/prompts/support/"))
    assert 'hx-get="/squads/acme/prompts/support/v1/review"' in detail
    version = _body(client.get("/squads/acme/prompts/support/versions/1"))
    assert 'hx-get="/squads/acme/prompts/support/v1/review"' in version
    assert 'hx-get="/squads/acme/prompts/support/v1/comments"' in version


def test_engineer_requests_a_review_with_a_note_and_named_reviewers(template):
    client = _client("engineer")
    panel = client.get("/squads/acme/prompts/support/v1/review", headers=HTMX)
    body = _body(panel)
    assert panel.status_code == 200 and "<html" not in body
    assert "not requested" in body and "Request review of v1" in body
    # Members who may decide, not the requester himself and not viewers.
    # A searchable list of checkboxes, not a Ctrl-click multi-select.
    assert "<select" not in body and "data-reviewer-picker" in body
    for name in ("owner", "sme", "compliance"):
        assert f'type="checkbox" name="reviewers" value="{name}"' in body
    assert 'value="engineer"' not in body and 'value="viewer"' not in body

    response = client.post(
        "/squads/acme/prompts/support/v1/review",
        {"note": "Please check the tone", "reviewers": ["sme", "compliance"]},
        headers=HTMX,
    )
    body = _body(response)
    review = ReviewRequest.objects.get()
    assert response.status_code == 200 and "<html" not in body
    assert "Review requested." in body and f'href="/squads/acme/reviews/{review.pk}"' in body
    assert "needs 1 compliance approval; needs 1 SME approval" in body
    assert "Request review of v1" not in body  # one holding request per version
    assert review.note == "Please check the tone" and review.opened_by.username == "engineer"
    assert sorted(u.username for u in review.reviewers.all()) == ["compliance", "sme"]


def test_request_review_without_htmx_redirects_to_the_request(template):
    response = _client("engineer").post("/squads/acme/prompts/support/v1/review", {"note": ""})
    review = ReviewRequest.objects.get()
    assert response.status_code == 302 and response.url == f"/squads/acme/reviews/{review.pk}"


def test_request_review_errors_render_inline_with_their_status(template):
    client = _client("engineer")
    unknown = client.post(
        "/squads/acme/prompts/support/v1/review", {"reviewers": ["nobody"]}, headers=HTMX
    )
    assert unknown.status_code == 422
    assert "No active user named &#x27;nobody&#x27;." in _body(unknown)
    viewer = client.post(
        "/squads/acme/prompts/support/v1/review", {"reviewers": ["viewer"]}, headers=HTMX
    )
    assert viewer.status_code == 422 and "may not decide on reviews" in _body(viewer)
    assert 'role="alert"' in _body(viewer) and "<html" not in _body(viewer)
    assert not ReviewRequest.objects.exists()
    # The form is still there to pick again.
    assert 'type="checkbox" name="reviewers" value="sme"' in _body(viewer)


def test_request_review_permissions(template):
    for username, status in (("sme", 403), ("viewer", 403), ("outsider", 404)):
        response = _client(username).post("/squads/acme/prompts/support/v1/review", headers=HTMX)
        assert response.status_code == status, username
    # Those who may not request see the state and no form.
    body = _body(_client("sme").get("/squads/acme/prompts/support/v1/review", headers=HTMX))
    assert "not requested" in body and "<form" not in body
    assert not ReviewRequest.objects.exists()


# --- the request page ------------------------------------------------------------------


@pytest.fixture
def v2_review(template) -> ReviewRequest:
    """production -> v1 (approved); v2 under review, asked of sme."""
    approve(template.latest_version)
    prompts.label_move(
        actor=_user("engineer"),
        template=template,
        name="production",
        version=template.latest_version,
    )
    v2 = new_version(template, 2)
    return open_review(v2, note="Shorter prompt", reviewers=[_user("sme")])


def test_request_page_shows_diff_against_production_policy_and_missing(v2_review):
    response = _client("sme").get(f"/squads/acme/reviews/{v2_review.pk}")
    body = _body(response)
    assert response.status_code == 200
    assert f"Review #{v2_review.pk}" in body and "Shorter prompt" in body
    assert "(v1 → v2)" in body  # against production
    assert '<span class="skip">changed: </span>Version 2:</td>' in body
    assert "BREAKING" in body  # v2 drops the customer variable
    assert "1 SME approval" in body and "1 compliance approval" in body
    assert "needs 1 compliance approval" in body and "needs 1 SME approval" in body
    assert 'id="decision-panel"' in body and "Submit decision" in body
    assert 'id="m1-l1"' in body  # numbered lines for anchored comments


def test_request_page_permissions(v2_review):
    assert _client("viewer").get(f"/squads/acme/reviews/{v2_review.pk}").status_code == 200
    assert _client("outsider").get(f"/squads/acme/reviews/{v2_review.pk}").status_code == 404
    assert _client("sme").get("/squads/acme/reviews/999999").status_code == 404
    viewer = _body(_client("viewer").get(f"/squads/acme/reviews/{v2_review.pk}"))
    assert "Submit decision" not in viewer and "Withdraw request" not in viewer


def test_decisions_with_htmx_re_render_the_panel(v2_review):
    url = f"/squads/acme/reviews/{v2_review.pk}/decide"
    response = _client("sme").post(url, {"verdict": "approve"}, headers=HTMX)
    body = _body(response)
    assert response.status_code == 200 and "<html" not in body
    assert body.lstrip().startswith('<section class="card decision-panel" id="decision-panel"')
    assert "Your decision is recorded." in body
    # Out of sme's inbox: the navigation's count is swapped out of band.
    assert 'id="nav-reviews" hx-swap-oob="true"' in body and " waiting</span>" not in body
    assert 'id="decision-sme"' in body and "SME</td>" in body  # counted as SME
    assert "needs 1 compliance approval" in body and "needs 1 SME approval" not in body

    # Request changes needs a comment: refused inline with 422, nothing recorded.
    compliance = _client("compliance")
    refused = compliance.post(url, {"verdict": "request_changes"}, headers=HTMX)
    assert refused.status_code == 422 and 'id="decision-error"' in _body(refused)
    assert "must not be empty" in _body(refused)
    v2_review.refresh_from_db()
    assert v2_review.state == State.OPEN

    changes = compliance.post(
        url, {"verdict": "request_changes", "comment": "Cite the policy"}, headers=HTMX
    )
    body = _body(changes)
    assert changes.status_code == 200 and "changes requested" in body
    assert "Cite the policy" in body and "Submit decision" not in body
    assert "save a new version and request a review of it" in body
    v2_review.refresh_from_db()
    assert v2_review.state == State.CHANGES_REQUESTED

    # The request takes no more decisions: 409 inline.
    late = _client("owner").post(url, {"verdict": "approve"}, headers=HTMX)
    assert late.status_code == 409 and "takes no more decisions" in _body(late)


def test_changing_a_decision_keeps_the_history(v2_review):
    client = _client("sme")
    url = f"/squads/acme/reviews/{v2_review.pk}/decide"
    client.post(url, {"verdict": "reject", "comment": "Wrong tone"}, headers=HTMX)
    v2_review.refresh_from_db()
    assert v2_review.state == State.REJECTED
    body = _body(client.get(f"/squads/acme/reviews/{v2_review.pk}"))
    assert "rejected" in body and "Wrong tone" in body
    assert "Submit decision" not in body and "takes no more decisions" in body


def test_decision_without_htmx_redirects(v2_review):
    response = _client("sme").post(
        f"/squads/acme/reviews/{v2_review.pk}/decide", {"verdict": "approve"}
    )
    assert response.status_code == 302
    assert response.url == f"/squads/acme/reviews/{v2_review.pk}"


def test_decision_refusals(v2_review):
    url = f"/squads/acme/reviews/{v2_review.pk}/decide"
    author = _client("engineer")
    assert "another reviewer must decide" in _body(author.get(url.removesuffix("/decide")))
    refused = author.post(url, {"verdict": "approve"}, headers=HTMX)
    assert refused.status_code == 403 and "another reviewer must decide" in _body(refused)
    assert _client("viewer").post(url, {"verdict": "approve"}, headers=HTMX).status_code == 403
    assert _client("outsider").post(url, {"verdict": "approve"}).status_code == 404
    bad = _client("sme").post(url, {"verdict": "maybe"}, headers=HTMX)
    assert bad.status_code == 422 and "Verdict must be one of" in _body(bad)


def test_opener_withdraws_with_htmx(v2_review):
    url = f"/squads/acme/reviews/{v2_review.pk}/withdraw"
    page = _body(_client("engineer").get(f"/squads/acme/reviews/{v2_review.pk}"))
    assert "Withdraw request" in page
    assert "Withdraw request" not in _body(
        _client("sme").get(f"/squads/acme/reviews/{v2_review.pk}")
    )
    assert _client("sme").post(url, headers=HTMX).status_code == 403
    response = _client("engineer").post(url, headers=HTMX)
    assert response.status_code == 200 and "The request is withdrawn." in _body(response)
    v2_review.refresh_from_db()
    assert v2_review.state == State.WITHDRAWN
    again = _client("owner").post(url, headers=HTMX)
    assert again.status_code == 409 and 'role="alert"' in _body(again)


def test_request_list_filters_by_state(v2_review):
    client = _client("viewer")
    body = _body(client.get("/squads/acme/reviews/"))
    assert f'id="request-{v2_review.pk}"' in body and "Approval policy" in body
    approved = _body(client.get("/squads/acme/reviews/", {"state": "approved"}, headers=HTMX))
    assert "<html" not in approved and f'id="request-{v2_review.pk}"' not in approved
    assert len(re.findall(r'id="request-\d+"', approved)) == 1  # v1's approved request


# --- the gate on the prompt page ------------------------------------------------------------


def test_label_form_shows_the_gate_message_inline(template):
    client = _client("engineer")
    url = "/squads/acme/prompts/support/labels/"
    refused = client.post(url, {"name": "production", "version": "1"}, headers=HTMX)
    body = _body(refused)
    assert refused.status_code == 409 and "<html" not in body
    assert 'id="label-error"' in body and "no open review request" in body
    assert "needs 1 compliance approval" in body

    review = open_review(template.latest_version)
    services.review_decide(actor=_user("sme"), review=review, verdict="approve")
    refused = client.post(url, {"name": "production", "version": "1"}, headers=HTMX)
    assert refused.status_code == 409
    assert "needs 1 compliance approval" in _body(refused)
    assert "needs 1 SME approval" not in _body(refused)
    assert not Label.objects.filter(name="production").exists()

    services.review_decide(actor=_user("compliance"), review=review, verdict="approve")
    moved = client.post(url, {"name": "production", "version": "1"}, headers=HTMX)
    assert moved.status_code == 200 and "Label production now points at v1." in _body(moved)


# --- comments -----------------------------------------------------------------------------


def test_comment_threads_anchor_reply_resolve(template):
    url = "/squads/acme/prompts/support/v1/comments"
    sme = _client("sme")
    response = sme.post(
        url, {"body": "Why the tier?", "message_index": "1", "line": "1"}, headers=HTMX
    )
    body = _body(response)
    assert response.status_code == 200 and "<html" not in body
    assert body.lstrip().startswith('<section class="card comments" id="comments"')
    assert "Message 1, line 1" in body and "Why the tier?" in body
    assert "You help {{ customer.name }}" in body  # the anchored line, quoted
    thread = ReviewComment.objects.get()
    assert (thread.message_index, thread.line) == (0, 1)

    engineer = _client("engineer")
    reply = engineer.post(
        url, {"body": "Pro customers get more", "parent": thread.pk}, headers=HTMX
    )
    assert reply.status_code == 200 and "Pro customers get more" in _body(reply)
    resolved = engineer.post(f"/squads/acme/comments/{thread.pk}/resolve", headers=HTMX)
    body = _body(resolved)
    assert resolved.status_code == 200 and "resolved</span>" in body and "Reopen" in body
    assert "(0 open threads)" in body
    reopened = engineer.post(
        f"/squads/acme/comments/{thread.pk}/resolve", {"resolved": "0"}, headers=HTMX
    )
    assert "(1 open thread)" in _body(reopened)

    page = _body(_client("viewer").get(url, headers=HTMX))
    assert "Why the tier?" in page and "Add comment" not in page and "Resolve" not in page


def test_comment_errors_inline_and_permissions(template):
    url = "/squads/acme/prompts/support/v1/comments"
    bad_line = _client("sme").post(
        url, {"body": "x", "message_index": "1", "line": "99"}, headers=HTMX
    )
    body = _body(bad_line)
    assert bad_line.status_code == 422 and 'id="comment-error"' in body
    assert "there is no line 99" in body and 'value="99"' in body
    empty = _client("sme").post(url, {"body": "  "}, headers=HTMX)
    assert empty.status_code == 422 and "must not be empty" in _body(empty)
    not_a_number = _client("sme").post(url, {"body": "x", "line": "two"}, headers=HTMX)
    assert not_a_number.status_code == 422
    assert _client("viewer").post(url, {"body": "x"}, headers=HTMX).status_code == 403
    assert _client("outsider").post(url, {"body": "x"}).status_code == 404
    assert not ReviewComment.objects.exists()


def test_comments_on_the_request_page_belong_to_the_request(v2_review):
    response = _client("compliance").post(
        "/squads/acme/prompts/support/v2/comments",
        {"body": "Looks fine", "review": v2_review.pk},
    )
    assert response.status_code == 302
    assert response.url == f"/squads/acme/reviews/{v2_review.pk}#comments"
    assert ReviewComment.objects.get().request_id == v2_review.pk
    page = _body(_client("sme").get(f"/squads/acme/reviews/{v2_review.pk}"))
    assert "Looks fine" in page and f'name="review" value="{v2_review.pk}"' in page


# --- the policy page ---------------------------------------------------------------------


def test_compliance_edits_the_policy(squad):
    client = _client("compliance")
    page = _body(client.get("/squads/acme/approval-policy"))
    assert "Save policy" in page and 'name="required_sme"' in page
    response = client.post(
        "/squads/acme/approval-policy",
        {
            "required_sme": "2",
            "required_compliance": "1",
            "required_prompt_engineer": "0",
            "required_owner": "",
            "protected_labels": "production, staging",
        },
        headers=HTMX,
    )
    body = _body(response)
    assert response.status_code == 200 and "Saved." in body and "<html" not in body
    policy = ApprovalPolicy.objects.get(squad=squad)
    assert policy.required_approvals == {"sme": 2, "compliance": 1}
    assert policy.changes_block is False  # the box was not ticked
    squad.refresh_from_db()
    assert squad.protected_labels == ["production", "staging"]
    assert 'value="production, staging"' in body


def test_policy_errors_inline_and_read_only_for_others(squad):
    client = _client("owner")
    response = client.post(
        "/squads/acme/approval-policy",
        {"required_sme": "lots", "protected_labels": "production"},
        headers=HTMX,
    )
    body = _body(response)
    assert response.status_code == 422 and 'id="policy-error"' in body
    assert "must be a whole number" in body and 'value="lots"' in body
    bad_label = client.post(
        "/squads/acme/approval-policy", {"protected_labels": "Prod Label"}, headers=HTMX
    )
    assert bad_label.status_code == 422 and "is not a label name" in _body(bad_label)
    assert not ApprovalPolicy.objects.filter(squad=squad).exclude(version=1).exists()

    sme = _client("sme")
    page = _body(sme.get("/squads/acme/approval-policy"))
    assert "Save policy" not in page and "1 × Subject-matter expert" in page
    assert sme.post("/squads/acme/approval-policy", {"required_sme": "0"}).status_code == 403
    assert _client("outsider").get("/squads/acme/approval-policy").status_code == 404


# --- inbox, navigation, notifications -----------------------------------------------------


def test_inbox_and_navigation_counts(template):
    review = open_review(template.latest_version, reviewers=[_user("sme")])
    sme = _client("sme")
    page = _body(sme.get("/inbox/"))
    assert f'id="inbox-{review.pk}"' in page and "asked by name" in page
    assert 'id="nav-inbox"' in page and '1<span class="skip"> waiting</span>' in page
    assert '1<span class="skip"> unread</span>' in page  # "engineer asks for your review"
    partial = _body(sme.get("/inbox/", {"squad": "acme"}, headers=HTMX))
    assert "<html" not in partial and f'id="inbox-{review.pk}"' in partial

    # compliance is not named but their role is missing; the author waits for nobody.
    assert "your role is needed" in _body(_client("compliance").get("/inbox/"))
    engineer = _body(_client("engineer").get("/inbox/"))
    assert "Nothing is waiting for you." in engineer and " waiting</span>" not in engineer
    assert _client("sme").get("/inbox/", {"squad": "nope"}).status_code == 404


def test_notifications_open_marks_read(template):
    open_review(template.latest_version, reviewers=[_user("sme")])
    client = _client("sme")
    note = Notification.objects.get(user__username="sme")
    page = _body(client.get("/notifications/"))
    assert "engineer asks for your review of &#x27;support&#x27; v1." in page
    response = client.get(f"/notifications/{note.pk}")
    assert response.status_code == 302 and response.url == note.url
    note.refresh_from_db()
    assert note.read_at is not None
    assert _client("compliance").get(f"/notifications/{note.pk}").status_code == 404
    client.post("/notifications/read")
    assert " unread</span>" not in _body(client.get("/notifications/"))


def test_navigation_costs_nothing_for_anonymous_and_admin(squad, django_assert_num_queries):
    with django_assert_num_queries(0):
        Client().get("/login/")
    staff = UserFactory(username="staffer", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    body = _body(client.get("/admin/"))
    assert "nav-inbox" not in body


def test_navigation_counts_reuse_the_memberships(template, django_assert_num_queries):
    from apps.reviews.selectors.approvals import inbox_counts_for_user
    from apps.squads.selectors import memberships_of_user

    open_review(template.latest_version)
    for username in ("sme", "viewer", "engineer"):
        user = _user(username)
        roles = {pk: m.roles for pk, m in memberships_of_user(user=user).items()}
        with django_assert_num_queries(0 if username == "viewer" else 1):
            given = inbox_counts_for_user(user=user, roles_by_squad=roles)
        assert given == inbox_counts_for_user(user=user)
    assert given == {} and inbox_counts_for_user(user=_user("sme")) == {template.squad_id: 1}


# --- query counts ------------------------------------------------------------------------


def _bulk_requests(template: PromptTemplate, n: int) -> None:
    """n versions of `template`, each under an open request asking sme by name."""
    first = template.latest_version
    engineer = _user("engineer")
    PromptVersion.objects.bulk_create(
        PromptVersion(
            template=template,
            number=number,
            messages=first.messages,
            input_schema=first.input_schema,
            model_settings=first.model_settings,
            commit_message=f"v{number}",
            author=engineer,
            content_hash=f"{number:064d}",
        )
        for number in range(2, n + 2)
    )
    versions = PromptVersion.objects.filter(template=template, number__gt=1)
    policy = services.policy_snapshot(services.approval_policy_get(squad=template.squad))
    requests = ReviewRequest.objects.bulk_create(
        ReviewRequest(
            squad=template.squad,
            template=template,
            version=v,
            opened_by=engineer,
            policy=policy,
            missing=["needs 1 compliance approval", "needs 1 SME approval"],
        )
        for v in versions
    )
    sme = _user("sme")
    ReviewRequest.reviewers.through.objects.bulk_create(
        ReviewRequest.reviewers.through(reviewrequest_id=r.pk, user_id=sme.pk) for r in requests
    )


@pytest.mark.parametrize("n", [10, 1000])
def test_inbox_query_count_is_fixed(template, n, django_assert_num_queries):
    _bulk_requests(template, n)
    client = _client("sme")
    client.get("/inbox/")  # warm the session, permission and squad caches
    # Session and user; the navigation: memberships, squads, waiting requests, unread
    # notifications; the inbox: memberships, waiting requests, their rows.
    with django_assert_num_queries(9):
        response = client.get("/inbox/")
    body = _body(response)
    assert len(re.findall(r'id="inbox-\d+"', body)) == min(n, 200)
    assert f"Waiting for you ({n})" in body


def test_version_review_page_without_htmx(template):
    open_review(template.latest_version)
    for url in (
        "/squads/acme/prompts/support/v1/review",
        "/squads/acme/prompts/support/v1/comments",
    ):
        body = _body(_client("sme").get(url))
        assert "<html" in body and 'id="review-v1"' in body and 'id="comments"' in body
        assert 'name="review"' not in body  # comments here belong to the version only
