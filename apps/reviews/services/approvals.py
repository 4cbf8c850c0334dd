"""Every write of Part A: the approval policy, review requests and decisions, comments on
versions, in-app notifications. The approval rule itself is `apps.reviews.policy`; the
protected-label gate that reads its result is `apps.reviews.gate`."""

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core.exceptions import Conflict, PermissionDenied, ValidationFailed
from apps.core.validation import HYPHENS_OR_UNDERSCORES as LABEL_RE
from apps.prompts.models import LABEL_MAX, PromptTemplate, PromptVersion
from apps.reviews.models import (
    ApprovalPolicy,
    Notification,
    ReviewComment,
    ReviewDecision,
    ReviewRequest,
)
from apps.reviews.policy import ROLE_NOUN, Vote, derive, is_closed
from apps.squads.access import has_squad_permission, require_squad_permission
from apps.squads.models import Membership, Squad
from apps.squads.permissions import (
    COMMENT_PROMPTS,
    DECIDE_REVIEW,
    MANAGE_APPROVAL_POLICY,
    REQUEST_REVIEW,
    Role,
)
from apps.squads.selectors import squad_forget
from apps.webhooks import emitters as webhooks

User = AbstractBaseUser
State = ReviewRequest.State
Verdict = ReviewDecision.Verdict

# Requests still waiting for decisions; a newer version's request supersedes these.
PENDING_STATES = (State.OPEN, State.CHANGES_REQUESTED)
APPROVER_ROLES = tuple(r for r in Role.values if r != Role.VIEWER)
MAX_REQUIRED_PER_ROLE = 10
TEXT_MAX = 5000


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


# `approval_policy_update(min_eval_pass_rate=KEEP)` leaves the value alone; None clears it.
KEEP: Any = _Keep()


# --- helpers ---------------------------------------------------------------------------


def _fresh_roles(user: User, squad_id: int) -> list[str]:
    """The user's roles in the squad now, from the database (not the cache): the role a
    decision counts for is the one held when deciding."""
    roles = (
        Membership.objects.filter(user_id=user.pk, squad_id=squad_id)
        .values_list("roles", flat=True)
        .first()
    )
    return list(roles or [])


def _clean_text(value: str | None, *, field: str, what: str, required: bool) -> str:
    value = (value or "").strip()
    if required and not value:
        raise ValidationFailed(f"{what} must not be empty.", field=field)
    if len(value) > TEXT_MAX:
        raise ValidationFailed(
            f"{what} is {len(value)} characters long; the limit is {TEXT_MAX}.", field=field
        )
    return value


def _version_url(version: PromptVersion) -> str:
    template = version.template
    return reverse(
        "prompts:version",
        kwargs={"squad": template.squad.slug, "slug": template.slug, "number": version.number},
    )


def _notify(
    users: Iterable[User | None],
    *,
    squad: Squad,
    kind: str,
    text: str,
    url: str = "",
    skip: Iterable[int | None] = (),
) -> None:
    """In-app notifications, one per distinct user, never to the people in `skip`."""
    skipped = {pk for pk in skip if pk is not None}
    seen: set[int] = set()
    rows = []
    for user in users:
        if user is None or user.pk in skipped or user.pk in seen:
            continue
        seen.add(user.pk)
        rows.append(
            Notification(user_id=user.pk, squad_id=squad.pk, kind=kind, text=text[:500], url=url)
        )
    Notification.objects.bulk_create(rows)


def open_thread_count(*, version_id: int) -> int:
    """Unresolved comment threads on a version (what `threads_block` waits for)."""
    return ReviewComment.objects.filter(
        version_id=version_id, parent__isnull=True, resolved_at__isnull=True
    ).count()


def _votes(review: ReviewRequest) -> list[Vote]:
    return [
        Vote(reviewer_id, verdict, tuple(roles))
        for reviewer_id, verdict, roles in ReviewDecision.objects.filter(
            request=review, is_current=True
        ).values_list("reviewer_id", "verdict", "roles")
    ]


def _lock_request(review: ReviewRequest) -> ReviewRequest:
    """Re-read the request under its row lock (PostgreSQL; SQLite's IMMEDIATE transactions
    already serialise writers), so concurrent decisions see each other."""
    return (
        ReviewRequest.objects.select_for_update(of=("self",))
        .select_related("squad", "template", "version", "version__author", "opened_by")
        .get(pk=review.pk)
    )


def _describe(review: ReviewRequest) -> str:
    return f"'{review.template.slug}' v{review.version.number}"


# --- the policy ------------------------------------------------------------------------


def approval_policy_get(*, squad: Squad) -> ApprovalPolicy:
    """The squad's policy; squads created before the review workflow get the default one
    ({"sme": 1, "compliance": 1}, blocking "request changes") on first use."""
    policy, _ = ApprovalPolicy.objects.get_or_create(squad_id=squad.pk)
    return policy


def _clean_required_approvals(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValidationFailed(
            'Required approvals must map roles to counts, for example {"sme": 1}.',
            field="required_approvals",
        )
    clean: dict[str, int] = {}
    for role, count in value.items():
        where = f"required_approvals.{role}"
        if role not in APPROVER_ROLES:
            raise ValidationFailed(
                f"'{role}' is not a role that can approve; use one of {', '.join(APPROVER_ROLES)}.",
                field=where,
            )
        noun = ROLE_NOUN[role][0]
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValidationFailed(
                f"The number of {noun} approvals must be a whole number (got {count!r}).",
                field=where,
            )
        if not 0 <= count <= MAX_REQUIRED_PER_ROLE:
            raise ValidationFailed(
                f"The number of {noun} approvals must be from 0 to {MAX_REQUIRED_PER_ROLE} "
                f"(got {count}).",
                field=where,
            )
        if count:
            clean[role] = count
    return {role: clean[role] for role in APPROVER_ROLES if role in clean}


def _clean_protected_labels(labels: Any) -> list[str]:
    if not isinstance(labels, list | tuple):
        raise ValidationFailed(
            "Protected labels must be a list of names.", field="protected_labels"
        )
    clean = []
    for label in labels:
        label = str(label).strip()
        if not LABEL_RE.match(label) or len(label) > LABEL_MAX:
            raise ValidationFailed(
                f"'{label}' is not a label name (lowercase letters, digits, '-' or '_').",
                field="protected_labels",
            )
        clean.append(label)
    return sorted(set(clean))


def _clean_pass_rate(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValidationFailed(
            f"The minimum eval pass rate must be a number from 0 to 1 (got {value!r}).",
            field="min_eval_pass_rate",
        )
    return float(value)


def _policy_fields(policy: ApprovalPolicy, protected_labels: list[str]) -> dict[str, Any]:
    return {
        "required_approvals": dict(policy.required_approvals),
        "protected_labels": list(protected_labels),
        "changes_block": policy.changes_block,
        "threads_block": policy.threads_block,
        "min_eval_pass_rate": policy.min_eval_pass_rate,
    }


def policy_snapshot(policy: ApprovalPolicy) -> dict[str, Any]:
    """What a review request keeps of the policy it was opened under."""
    return {
        "version": policy.version,
        "required_approvals": dict(policy.required_approvals),
        "changes_block": policy.changes_block,
        "threads_block": policy.threads_block,
        "min_eval_pass_rate": policy.min_eval_pass_rate,
    }


@transaction.atomic
def approval_policy_update(
    *,
    actor: User,
    squad: Squad,
    required_approvals: dict[str, int] | None = None,
    protected_labels: list[str] | None = None,
    changes_block: bool | None = None,
    threads_block: bool | None = None,
    min_eval_pass_rate: float | None = KEEP,
    request: HttpRequest | None = None,
) -> ApprovalPolicy:
    """Change the squad's approval policy; None (KEEP for the pass rate, where None clears
    it) leaves a field as it is. Requests already open keep the policy they were opened
    under; protected labels apply to every label move from the commit on."""
    require_squad_permission(actor, squad, MANAGE_APPROVAL_POLICY)
    # The squad row holds the protected labels: lock it so concurrent edits do not
    # overwrite each other's before/after.
    locked = Squad.objects.select_for_update().get(pk=squad.pk)
    policy = approval_policy_get(squad=locked)
    before = _policy_fields(policy, locked.protected_labels or [])
    labels = before["protected_labels"]
    if required_approvals is not None:
        policy.required_approvals = _clean_required_approvals(required_approvals)
    if protected_labels is not None:
        labels = _clean_protected_labels(protected_labels)
    if changes_block is not None:
        if not isinstance(changes_block, bool):
            raise ValidationFailed(
                "Whether 'request changes' blocks must be true or false.", field="changes_block"
            )
        policy.changes_block = changes_block
    if threads_block is not None:
        if not isinstance(threads_block, bool):
            raise ValidationFailed(
                "Whether open comment threads block approval must be true or false.",
                field="threads_block",
            )
        policy.threads_block = threads_block
    if min_eval_pass_rate is not KEEP:
        policy.min_eval_pass_rate = _clean_pass_rate(min_eval_pass_rate)
    after = _policy_fields(policy, labels)
    if after == before:
        return policy
    policy.version += 1
    policy.updated_at = timezone.now()
    policy.updated_by = actor if actor.is_authenticated else None
    policy.save()
    if labels != before["protected_labels"]:
        locked.protected_labels = labels
        locked.save(update_fields=["protected_labels"])
        squad.protected_labels = labels
        # Squad rows are cached by slug (squads.selectors.squad_by_slug).
        squad_forget(locked.slug)
    audit_log(
        actor=actor,
        action="review.policy_updated",
        squad=locked,
        target=policy,
        data={
            "version": policy.version,
            "changed": sorted(k for k in after if after[k] != before[k]),
            "before": before,
            "after": after,
        },
        request=request,
    )
    return policy


# --- review requests -------------------------------------------------------------------


def _clean_reviewers(
    *, squad: Squad, version: PromptVersion, reviewers: Iterable[User]
) -> list[User]:
    unique = list({user.pk: user for user in reviewers}.values())
    if not unique:
        return []
    members = set(
        Membership.objects.filter(
            squad_id=squad.pk, user_id__in=[u.pk for u in unique]
        ).values_list("user_id", flat=True)
    )
    for user in unique:
        name = user.get_username()
        if user.pk not in members or not user.is_active:
            raise ValidationFailed(
                f"'{name}' is not a member of squad '{squad.slug}' and cannot review.",
                field="reviewers",
            )
        if user.pk == version.author_id:
            raise ValidationFailed(
                f"'{name}' wrote version {version.number} and cannot review it.",
                field="reviewers",
            )
        if not has_squad_permission(user, squad, DECIDE_REVIEW):
            raise ValidationFailed(
                f"'{name}' may not decide on reviews in squad '{squad.slug}' "
                "(SMEs, compliance leads, prompt engineers and owners may).",
                field="reviewers",
            )
    return unique


def _members_holding(*, squad: Squad, roles: Iterable[str]) -> list[User]:
    wanted = set(roles)
    return [
        m.user
        for m in Membership.objects.filter(squad_id=squad.pk).select_related("user")
        if m.user.is_active and wanted.intersection(m.roles)
    ]


@transaction.atomic
def review_request_open(
    *,
    actor: User,
    version: PromptVersion,
    note: str = "",
    reviewers: list[User] | None = None,
    request: HttpRequest | None = None,
) -> ReviewRequest:
    """Ask for a version's approval under the squad's current policy. Pending requests on
    older versions of the template are superseded; approved ones stay approved, so rolling
    a protected label back to them keeps working."""
    template = version.template
    squad = template.squad
    require_squad_permission(actor, squad, REQUEST_REVIEW)
    note = _clean_text(note, field="note", what="The note", required=False)
    # Serialise opens per template: the holding check, the newer-version check and
    # superseding must see each other's requests.
    PromptTemplate.objects.select_for_update().filter(pk=template.pk).first()
    holding = ReviewRequest.objects.filter(
        version=version, state__in=ReviewRequest.HOLDING_STATES
    ).first()
    if holding is not None:
        raise Conflict(
            f"Version {version.number} of '{template.slug}' already has review request "
            f"#{holding.pk} ({holding.get_state_display().lower()}).",
            field="version",
            extra={"review_request": holding.pk, "state": holding.state},
        )
    newer = (
        ReviewRequest.objects.filter(
            template=template, state__in=PENDING_STATES, version__number__gt=version.number
        )
        .select_related("version")
        .order_by("-version__number")
        .first()
    )
    if newer is not None:
        raise Conflict(
            f"Version {newer.version.number} of '{template.slug}' is already under review "
            f"(request #{newer.pk}); version {version.number} is older and cannot be "
            "reviewed while it is.",
            field="version",
            extra={"review_request": newer.pk, "state": newer.state},
        )
    named = _clean_reviewers(squad=squad, version=version, reviewers=reviewers or [])
    snapshot = policy_snapshot(approval_policy_get(squad=squad))
    outcome = derive(
        policy=snapshot,
        author_id=version.author_id,
        votes=[],
        open_threads=open_thread_count(version_id=version.pk),
    )
    now = timezone.now()
    review = ReviewRequest.objects.create(
        squad_id=squad.pk,
        template=template,
        version=version,
        opened_by=actor,
        note=note,
        policy=snapshot,
        state=outcome.state,
        missing=outcome.missing,
        created_at=now,
        updated_at=now,
    )
    review.reviewers.set(named)
    superseded = list(
        ReviewRequest.objects.filter(
            template=template, state__in=PENDING_STATES, version__number__lt=version.number
        ).values_list("pk", flat=True)
    )
    ReviewRequest.objects.filter(pk__in=superseded).update(
        state=State.SUPERSEDED, superseded_by=review, closed_at=now, updated_at=now
    )
    audit_log(
        actor=actor,
        action="review.requested",
        squad=squad,
        target=review,
        data={
            "template": template.slug,
            "version": version.number,
            "note": note,
            "reviewers": [u.get_username() for u in named],
            "policy": snapshot,
            "state": review.state,
            "missing": review.missing,
            "superseded": superseded,
        },
        request=request,
    )
    webhooks.review_requested(review=review, actor=actor)
    recipients = named or _members_holding(squad=squad, roles=snapshot["required_approvals"])
    _notify(
        recipients,
        squad=squad,
        kind="review.requested",
        text=f"{actor.get_username()} asks for your review of {_describe(review)}.",
        url=_version_url(version),
        skip=[version.author_id, actor.pk],
    )
    return review


@transaction.atomic
def review_decide(
    *,
    actor: User,
    review: ReviewRequest,
    verdict: str,
    comment: str = "",
    request: HttpRequest | None = None,
) -> ReviewRequest:
    """Record the actor's verdict (replacing their earlier one, which stays in the history)
    and re-derive the request's state from every current decision under its policy."""
    require_squad_permission(actor, review.squad, DECIDE_REVIEW)
    if verdict not in Verdict.values:
        raise ValidationFailed(
            f"Verdict must be one of {', '.join(Verdict.values)} (got {verdict!r}).",
            field="verdict",
        )
    review = _lock_request(review)
    squad, version = review.squad, review.version
    if is_closed(state=review.state, policy=review.policy):
        if review.state == State.CHANGES_REQUESTED:
            why = "changes were requested; save a new version and request a review of it"
        else:
            why = f"it is {review.get_state_display().lower()}"
        raise Conflict(
            f"Review request #{review.pk} of {_describe(review)} takes no more decisions: {why}.",
            field="verdict",
            extra={"review_request": review.pk, "state": review.state},
        )
    if version.author_id == actor.pk:
        raise PermissionDenied(
            f"You wrote version {version.number} of '{review.template.slug}'; "
            "another reviewer must decide."
        )
    comment = _clean_text(
        comment,
        field="comment",
        what="A comment saying why",
        required=verdict != Verdict.APPROVE,
    )
    now = timezone.now()
    previous = ReviewDecision.objects.filter(
        request=review, reviewer=actor, is_current=True
    ).first()
    if previous is not None:
        previous.is_current = False
        previous.save(update_fields=["is_current"])
    roles = _fresh_roles(actor, squad.pk)
    ReviewDecision.objects.create(
        request=review,
        reviewer=actor,
        verdict=verdict,
        comment=comment,
        roles=roles,
        created_at=now,
    )
    before = review.state
    outcome = derive(
        policy=review.policy,
        author_id=version.author_id,
        votes=_votes(review),
        open_threads=open_thread_count(version_id=version.pk),
    )
    review.state, review.missing, review.updated_at = outcome.state, outcome.missing, now
    if is_closed(state=review.state, policy=review.policy):
        review.closed_at = now
    review.save(update_fields=["state", "missing", "updated_at", "closed_at"])
    audit_log(
        actor=actor,
        action="review.decided",
        squad=squad,
        target=review,
        data={
            "template": review.template.slug,
            "version": version.number,
            "verdict": verdict,
            "comment": comment,
            "roles": roles,
            "counted_as": outcome.counted.get(actor.pk),
            "previous_verdict": previous.verdict if previous else None,
            "state_before": before,
            "state": review.state,
            "missing": review.missing,
        },
        request=request,
    )
    webhooks.review_decided(
        review=review, actor=actor, verdict=verdict, roles=roles, state_before=before
    )
    told = [review.opened_by, version.author]
    url = _version_url(version)
    label = Verdict(verdict).label.lower()
    _notify(
        told,
        squad=squad,
        kind="review.decided",
        text=f"{actor.get_username()}: {label} on {_describe(review)}"
        + (f" — {comment}" if comment else ""),
        url=url,
        skip=[actor.pk],
    )
    if review.state != before:
        _notify(
            told,
            squad=squad,
            kind="review.state_changed",
            text=f"Review request #{review.pk} of {_describe(review)} is now "
            f"{review.get_state_display().lower()}.",
            url=url,
            skip=[actor.pk],
        )
    return review


def _is_owner(user: User, squad: Squad) -> bool:
    # Superusers hold every squad permission (squads.access); treat them as owners too.
    return user.is_superuser or Role.OWNER.value in _fresh_roles(user, squad.pk)


@transaction.atomic
def review_withdraw(
    *, actor: User, review: ReviewRequest, request: HttpRequest | None = None
) -> ReviewRequest:
    """Withdraw a request: its opener or an owner. An approved request may be withdrawn;
    the version is then no longer approved."""
    require_squad_permission(actor, review.squad, REQUEST_REVIEW)
    review = _lock_request(review)
    if review.opened_by_id != actor.pk and not _is_owner(actor, review.squad):
        raise PermissionDenied(
            f"Only the person who opened review request #{review.pk} or an owner of squad "
            f"'{review.squad.slug}' can withdraw it."
        )
    if review.state not in (*PENDING_STATES, State.APPROVED):
        raise Conflict(
            f"Review request #{review.pk} of {_describe(review)} is "
            f"{review.get_state_display().lower()}; only open, approved or changes-requested "
            "requests can be withdrawn.",
            extra={"review_request": review.pk, "state": review.state},
        )
    before, now = review.state, timezone.now()
    review.state, review.closed_at, review.updated_at = State.WITHDRAWN, now, now
    review.save(update_fields=["state", "closed_at", "updated_at"])
    audit_log(
        actor=actor,
        action="review.withdrawn",
        squad=review.squad,
        target=review,
        data={
            "template": review.template.slug,
            "version": review.version.number,
            "state_before": before,
        },
        request=request,
    )
    _notify(
        [review.opened_by, review.version.author],
        squad=review.squad,
        kind="review.withdrawn",
        text=f"{actor.get_username()} withdrew review request #{review.pk} of {_describe(review)}.",
        url=_version_url(review.version),
        skip=[actor.pk],
    )
    return review


# --- comments --------------------------------------------------------------------------


def _rederive_for_threads(
    *, actor: User, version: PromptVersion, request: HttpRequest | None
) -> ReviewRequest | None:
    """After a thread opens, closes or reopens: re-derive the version's request when its
    policy makes open threads block approval, so an approved request with a new open
    thread is open again (and the protected-label gate refuses it) until it is resolved.
    Returns the request when its state or what it misses changed. Call inside the
    comment's transaction."""
    holding = (
        ReviewRequest.objects.filter(version_id=version.pk, state__in=(State.OPEN, State.APPROVED))
        .values_list("pk", "policy")
        .first()
    )
    if holding is None or not holding[1].get("threads_block"):
        return None
    review = _lock_request(ReviewRequest(pk=holding[0]))
    if review.state not in (State.OPEN, State.APPROVED):
        return None
    outcome = derive(
        policy=review.policy,
        author_id=version.author_id,
        votes=_votes(review),
        open_threads=open_thread_count(version_id=version.pk),
    )
    if (outcome.state, outcome.missing) == (review.state, review.missing):
        return None
    before, now = review.state, timezone.now()
    review.state, review.missing, review.updated_at = outcome.state, outcome.missing, now
    review.closed_at = None
    review.save(update_fields=["state", "missing", "updated_at", "closed_at"])
    audit_log(
        actor=actor,
        action="review.state_changed",
        squad=review.squad,
        target=review,
        data={
            "template": review.template.slug,
            "version": version.number,
            "reason": "comment threads",
            "state_before": before,
            "state": review.state,
            "missing": review.missing,
        },
        request=request,
    )
    if review.state != before:
        _notify(
            [review.opened_by, version.author],
            squad=review.squad,
            kind="review.state_changed",
            text=f"Review request #{review.pk} of {_describe(review)} is now "
            f"{review.get_state_display().lower()}.",
            url=_version_url(version),
            skip=[actor.pk],
        )
    return review


def _clean_anchor(
    version: PromptVersion, message_index: int | None, line: int | None
) -> tuple[int | None, int | None]:
    if message_index is None:
        if line is not None:
            raise ValidationFailed("A line needs the message it is in.", field="message_index")
        return None, None
    count = len(version.messages)
    if isinstance(message_index, bool) or not isinstance(message_index, int):
        raise ValidationFailed("The message must be given by its number.", field="message_index")
    # Messages are numbered from 1 in what people read (the editor's "Message 2"), while
    # message_index counts from 0 as the API's field does.
    if not 0 <= message_index < count:
        raise ValidationFailed(
            f"Version {version.number} has {count} message{'s' if count != 1 else ''}; "
            f"there is no message {message_index + 1} (message_index {message_index}, "
            "counted from 0).",
            field="message_index",
        )
    if line is None:
        return message_index, None
    lines = len(str(version.messages[message_index].get("content", "")).split("\n"))
    if isinstance(line, bool) or not isinstance(line, int) or not 1 <= line <= lines:
        raise ValidationFailed(
            f"Message {message_index + 1} of version {version.number} has {lines} "
            f"line{'s' if lines != 1 else ''}; there is no line {line}.",
            field="line",
        )
    return message_index, line


def _thread_participants(root: ReviewComment) -> list[User]:
    users = [root.author]
    users += [c.author for c in root.replies.select_related("author")]
    return users


@transaction.atomic
def comment_add(
    *,
    actor: User,
    version: PromptVersion,
    body: str,
    message_index: int | None = None,
    line: int | None = None,
    parent: ReviewComment | None = None,
    review: ReviewRequest | None = None,
    request: HttpRequest | None = None,
) -> ReviewComment:
    """Start a thread on a version (optionally anchored to a message and a line) or reply
    to one; a reply joins the thread's root and carries no anchor of its own."""
    squad = version.template.squad
    require_squad_permission(actor, squad, COMMENT_PROMPTS)
    body = _clean_text(body, field="body", what="The comment", required=True)
    root = None
    if parent is not None:
        if parent.version_id != version.pk:
            raise ValidationFailed(
                f"Comment #{parent.pk} is not on version {version.number}.", field="parent"
            )
        if message_index is not None or line is not None:
            raise ValidationFailed(
                "A reply belongs to its thread's place; it cannot be anchored itself.",
                field="message_index",
            )
        root = parent.parent if parent.parent_id else parent
    else:
        message_index, line = _clean_anchor(version, message_index, line)
    if review is not None and review.version_id != version.pk:
        raise ValidationFailed(
            f"Review request #{review.pk} is not about version {version.number}.",
            field="review_request",
        )
    comment = ReviewComment.objects.create(
        squad_id=squad.pk,
        version=version,
        request=review if review is not None else (root.request if root else None),
        parent=root,
        author=actor,
        body=body,
        message_index=root.message_index if root else message_index,
        line=root.line if root else line,
    )
    audit_log(
        actor=actor,
        action="review.comment_added",
        squad=squad,
        target=comment,
        data={
            "template": version.template.slug,
            "version": version.number,
            "thread": root.pk if root else comment.pk,
            "message_index": comment.message_index,
            "line": comment.line,
        },
        request=request,
    )
    if root is None:
        _rederive_for_threads(actor=actor, version=version, request=request)
    where = f"'{version.template.slug}' v{version.number}"
    _notify(
        [version.author, *(_thread_participants(root) if root else [])],
        squad=squad,
        kind="review.commented",
        text=f"{actor.get_username()} commented on {where}: {body[:200]}",
        url=_version_url(version),
        skip=[actor.pk],
    )
    return comment


@transaction.atomic
def comment_resolve(
    *,
    actor: User,
    comment: ReviewComment,
    resolved: bool = True,
    request: HttpRequest | None = None,
) -> ReviewComment:
    """Resolve (or reopen) a thread, given its first comment."""
    version = comment.version
    squad = version.template.squad
    require_squad_permission(actor, squad, COMMENT_PROMPTS)
    if comment.parent_id is not None:
        raise ValidationFailed(
            f"Comment #{comment.pk} is a reply; resolve its thread (comment "
            f"#{comment.parent_id}) instead.",
            field="comment",
        )
    comment = ReviewComment.objects.select_for_update().get(pk=comment.pk)
    if (comment.resolved_at is not None) == resolved:
        return comment
    comment.resolved_at = timezone.now() if resolved else None
    comment.resolved_by = actor if resolved else None
    comment.save(update_fields=["resolved_at", "resolved_by"])
    audit_log(
        actor=actor,
        action="review.comment_resolved" if resolved else "review.comment_reopened",
        squad=squad,
        target=comment,
        data={"template": version.template.slug, "version": version.number},
        request=request,
    )
    _rederive_for_threads(actor=actor, version=version, request=request)
    state = "resolved" if resolved else "reopened"
    _notify(
        [version.author, *_thread_participants(comment)],
        squad=squad,
        kind=f"review.comment_{state}",
        text=f"{actor.get_username()} {state} a thread on '{version.template.slug}' "
        f"v{version.number}.",
        url=_version_url(version),
        skip=[actor.pk],
    )
    return comment


# --- notifications ---------------------------------------------------------------------


@transaction.atomic
def notification_mark_read(*, actor: User, ids: list[int] | None = None) -> int:
    """Mark the actor's own unread notifications read (all of them when `ids` is None);
    returns how many changed. Other users' ids are ignored."""
    unread = Notification.objects.filter(user_id=actor.pk, read_at__isnull=True)
    if ids is not None:
        unread = unread.filter(pk__in=ids)
    return unread.update(read_at=timezone.now())
