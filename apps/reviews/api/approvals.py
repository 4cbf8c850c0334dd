"""REST operations for approving prompt versions: the approval policy, review requests and
decisions, the inbox, comments on versions, notifications."""

from collections import Counter
from typing import Any

from django.http import HttpRequest
from ninja import Query, Router, Status

from apps.prompts import selectors as prompt_selectors
from apps.prompts.models import PromptVersion
from apps.reviews.models import ApprovalPolicy, Notification, ReviewComment, ReviewRequest
from apps.reviews.policy import Vote, derive
from apps.reviews.schemas.approvals import (
    ApprovalPolicyIn,
    ApprovalPolicyOut,
    CommentIn,
    CommentOut,
    DecisionIn,
    InboxOut,
    NotificationListOut,
    NotificationQuery,
    NotificationsReadIn,
    NotificationsReadOut,
    ResolveIn,
    ReviewRequestDetailOut,
    ReviewRequestListQuery,
    ReviewRequestOpenIn,
    ReviewRequestOut,
)
from apps.reviews.selectors import approvals as selectors
from apps.reviews.services import approvals as services
from apps.squads.models import Squad
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["reviews"])
NOTIFICATION_LIMIT = 100


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def _policy_out(policy: ApprovalPolicy, squad: Squad) -> dict[str, Any]:
    return {
        "version": policy.version,
        "required_approvals": policy.required_approvals,
        "protected_labels": squad.protected_labels or [],
        "changes_block": policy.changes_block,
        "threads_block": policy.threads_block,
        "min_eval_pass_rate": policy.min_eval_pass_rate,
        "updated_at": policy.updated_at,
        "updated_by": _username(policy.updated_by) if policy.updated_by_id else None,
    }


def _request_out(review: ReviewRequest) -> dict[str, Any]:
    return {
        "id": review.pk,
        "prompt": review.template.slug,
        "version": review.version.number,
        "state": review.state,
        "missing": review.missing,
        "note": review.note,
        "opened_by": _username(review.opened_by),
        "reviewers": [u.get_username() for u in review.reviewers.all()],
        "policy_version": review.policy.get("version", 1),
        "superseded_by": review.superseded_by_id,
        "created_at": review.created_at,
        "updated_at": review.updated_at,
        "closed_at": review.closed_at,
    }


def _decision_out(d: Any) -> dict[str, Any]:
    return {
        "reviewer": d.reviewer.get_username(),
        "verdict": d.verdict,
        "comment": d.comment,
        "roles": d.roles,
        "created_at": d.created_at,
    }


def _request_detail_out(request: HttpRequest, review: ReviewRequest) -> dict[str, Any]:
    decisions = list(review.decisions.all())
    current = [d for d in decisions if d.is_current]
    outcome = derive(
        policy=review.policy,
        author_id=review.version.author_id,
        votes=[Vote(d.reviewer_id, d.verdict, tuple(d.roles)) for d in current],
    )
    names = {d.reviewer_id: d.reviewer.get_username() for d in current}
    return {
        **_request_out(review),
        "policy": review.policy,
        "decisions": [_decision_out(d) for d in current],
        "counted": {names[pk]: role for pk, role in outcome.counted.items()},
        "history": [_decision_out(d) for d in decisions],
        "label_diffs": selectors.review_request_label_diffs(user=request.auth, review=review),
    }


def _comment_out(c: ReviewComment, *, replies: list[ReviewComment]) -> dict[str, Any]:
    return {
        "id": c.pk,
        "author": _username(c.author),
        "body": c.body,
        "created_at": c.created_at,
        "message_index": c.message_index,
        "line": c.line,
        "review_request": c.request_id,
        "resolved": c.resolved_at is not None,
        "resolved_by": _username(c.resolved_by) if c.resolved_by_id else None,
        "resolved_at": c.resolved_at,
        "replies": [
            {"id": r.pk, "author": _username(r.author), "body": r.body, "created_at": r.created_at}
            for r in replies
        ],
    }


def _notification_out(n: Notification) -> dict[str, Any]:
    return {
        "id": n.pk,
        "squad": n.squad.slug if n.squad_id else None,
        "kind": n.kind,
        "text": n.text,
        "url": n.url,
        "created_at": n.created_at,
        "read": n.read_at is not None,
    }


def _version(request: HttpRequest, squad: str, slug: str, number: int) -> PromptVersion:
    template = prompt_selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    return prompt_selectors.prompt_version_get(user=request.auth, template=template, number=number)


# --- policy --------------------------------------------------------------------------------


@router.get("/squads/{squad}/approval-policy", response=ApprovalPolicyOut)
def policy_detail(request: HttpRequest, squad: str) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    policy = selectors.approval_policy_get_for_user(user=request.auth, squad=squad_obj)
    return _policy_out(policy, squad_obj)


@router.put("/squads/{squad}/approval-policy", response=ApprovalPolicyOut)
def policy_update(request: HttpRequest, squad: str, payload: ApprovalPolicyIn) -> dict:
    """Replace the approval policy (owners and compliance leads)."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    policy = services.approval_policy_update(
        actor=request.auth,
        squad=squad_obj,
        required_approvals=payload.required_approvals,
        protected_labels=payload.protected_labels,
        changes_block=payload.changes_block,
        threads_block=payload.threads_block,
        min_eval_pass_rate=payload.min_eval_pass_rate,
        request=request,
    )
    return _policy_out(policy, squad_obj)


# --- review requests -------------------------------------------------------------------------


@router.post(
    "/squads/{squad}/prompts/{slug}/versions/{number}/review-requests",
    response={201: ReviewRequestDetailOut},
)
def review_request_open(
    request: HttpRequest, squad: str, slug: str, number: int, payload: ReviewRequestOpenIn
) -> Status:
    """Ask for a version's approval; pending requests on older versions are superseded."""
    version = _version(request, squad, slug, number)
    reviewers = selectors.reviewers_by_username(usernames=payload.reviewers)
    review = services.review_request_open(
        actor=request.auth,
        version=version,
        note=payload.note,
        reviewers=reviewers,
        request=request,
    )
    review = selectors.review_request_get_for_user(
        user=request.auth, squad=version.template.squad, pk=review.pk
    )
    return Status(201, _request_detail_out(request, review))


@router.get("/squads/{squad}/review-requests", response=list[ReviewRequestOut])
def review_request_list(
    request: HttpRequest, squad: str, filters: Query[ReviewRequestListQuery]
) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    template = (
        prompt_selectors.prompt_template_get_for_user(
            user=request.auth, squad_slug=squad, slug=filters.prompt
        )
        if filters.prompt
        else None
    )
    requests = selectors.review_request_list_for_user(
        user=request.auth, squad=squad_obj, state=filters.state or None, template=template
    )
    return [_request_out(r) for r in requests]


@router.get("/squads/{squad}/review-requests/{pk}", response=ReviewRequestDetailOut)
def review_request_detail(request: HttpRequest, squad: str, pk: int) -> dict:
    """A request with its policy snapshot, what is missing, current decisions (and the role
    each approval counts for), the history, and the diff from each protected label."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    review = selectors.review_request_get_for_user(user=request.auth, squad=squad_obj, pk=pk)
    return _request_detail_out(request, review)


@router.post("/squads/{squad}/review-requests/{pk}/decisions", response=ReviewRequestDetailOut)
def review_decide(request: HttpRequest, squad: str, pk: int, payload: DecisionIn) -> dict:
    """Approve, request changes or reject (a comment is required unless approving); a second
    decision replaces the first, which stays in the history."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    review = selectors.review_request_get_for_user(user=request.auth, squad=squad_obj, pk=pk)
    services.review_decide(
        actor=request.auth,
        review=review,
        verdict=payload.verdict,
        comment=payload.comment,
        request=request,
    )
    review = selectors.review_request_get_for_user(user=request.auth, squad=squad_obj, pk=pk)
    return _request_detail_out(request, review)


@router.post("/squads/{squad}/review-requests/{pk}/withdraw", response=ReviewRequestOut)
def review_withdraw(request: HttpRequest, squad: str, pk: int) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    review = selectors.review_request_get_for_user(user=request.auth, squad=squad_obj, pk=pk)
    services.review_withdraw(actor=request.auth, review=review, request=request)
    review = selectors.review_request_get_for_user(user=request.auth, squad=squad_obj, pk=pk)
    return _request_out(review)


# --- inbox ---------------------------------------------------------------------------------


@router.get("/inbox", response=InboxOut, tags=["account"])
def inbox(request: HttpRequest) -> dict:
    """Review requests waiting for your decision, across your squads, oldest first."""
    items = selectors.inbox_for_user(user=request.auth)
    return {
        "total": len(items),
        "counts": dict(Counter(r.squad.slug for r in items)),
        "items": [
            {
                "id": r.pk,
                "squad": r.squad.slug,
                "prompt": r.template.slug,
                "version": r.version.number,
                "state": r.state,
                "missing": r.missing,
                "opened_by": _username(r.opened_by),
                "created_at": r.created_at,
                "reason": r.inbox_reason,
            }
            for r in items
        ],
    }


# --- comments ------------------------------------------------------------------------------


@router.get("/squads/{squad}/prompts/{slug}/versions/{number}/comments", response=list[CommentOut])
def comment_list(request: HttpRequest, squad: str, slug: str, number: int) -> list:
    """The version's comment threads, oldest first, each with its replies."""
    version = _version(request, squad, slug, number)
    threads = selectors.comment_thread_list_for_user(user=request.auth, version=version)
    return [_comment_out(t, replies=list(t.replies.all())) for t in threads]


@router.post(
    "/squads/{squad}/prompts/{slug}/versions/{number}/comments", response={201: CommentOut}
)
def comment_add(
    request: HttpRequest, squad: str, slug: str, number: int, payload: CommentIn
) -> Status:
    """Start a thread (optionally anchored to a message and line) or reply with `parent`."""
    version = _version(request, squad, slug, number)
    squad_obj = version.template.squad
    parent = (
        selectors.comment_get_for_user(user=request.auth, version=version, pk=payload.parent)
        if payload.parent is not None
        else None
    )
    review = (
        selectors.review_request_get_for_user(
            user=request.auth, squad=squad_obj, pk=payload.review_request
        )
        if payload.review_request is not None
        else None
    )
    comment = services.comment_add(
        actor=request.auth,
        version=version,
        body=payload.body,
        message_index=payload.message_index,
        line=payload.line,
        parent=parent,
        review=review,
        request=request,
    )
    return Status(201, _comment_out(comment, replies=[]))


@router.post("/squads/{squad}/comments/{pk}/resolve", response=CommentOut)
def comment_resolve(request: HttpRequest, squad: str, pk: int, payload: ResolveIn) -> dict:
    """Resolve a thread (or reopen it with {"resolved": false}), given its first comment."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    comment = selectors.comment_get_for_user(user=request.auth, squad=squad_obj, pk=pk)
    services.comment_resolve(
        actor=request.auth, comment=comment, resolved=payload.resolved, request=request
    )
    comment = selectors.comment_get_for_user(user=request.auth, squad=squad_obj, pk=pk)
    return _comment_out(comment, replies=list(comment.replies.select_related("author")))


# --- notifications -------------------------------------------------------------------------


@router.get("/notifications", response=NotificationListOut, tags=["account"])
def notification_list(request: HttpRequest, q: Query[NotificationQuery]) -> dict:
    """Your latest notifications (at most 100), newest first."""
    items = selectors.notification_list_for_user(user=request.auth, unread=q.unread)
    return {
        "unread": selectors.notification_unread_count(user=request.auth),
        "items": [_notification_out(n) for n in items[:NOTIFICATION_LIMIT]],
    }


@router.post("/notifications/read", response=NotificationsReadOut, tags=["account"])
def notifications_read(request: HttpRequest, payload: NotificationsReadIn) -> dict:
    return {"marked": services.notification_mark_read(actor=request.auth, ids=payload.ids)}
