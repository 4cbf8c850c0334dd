"""Every read of Part A. Each selector checks that the user may see the squad (404 for
missing and forbidden alike) and costs a fixed number of queries whatever the number of
rows; the inbox and its counts are computed over two queries."""

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Exists, FilteredRelation, OuterRef, Prefetch, Q, QuerySet

from apps.core.exceptions import NotFound, ValidationFailed
from apps.prompts.diff import version_diff
from apps.prompts.models import Label, LabelMove, PromptTemplate, PromptVersion
from apps.reviews.models import (
    ApprovalPolicy,
    Notification,
    ReviewComment,
    ReviewDecision,
    ReviewRequest,
)
from apps.reviews.policy import Vote, approval_would_count
from apps.squads.access import require_squad_permission
from apps.squads.models import Membership, Squad
from apps.squads.permissions import DECIDE_REVIEW, VIEW_SQUAD, role_permissions

User = AbstractBaseUser | AnonymousUser
State = ReviewRequest.State
Verdict = ReviewDecision.Verdict


# --- policy ------------------------------------------------------------------------------


def approval_policy_get_for_user(*, user: User, squad: Squad) -> ApprovalPolicy:
    """The squad's policy; the default one (unsaved) when the squad never changed it."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    policy = ApprovalPolicy.objects.select_related("updated_by").filter(squad_id=squad.pk).first()
    return policy or ApprovalPolicy(squad_id=squad.pk)


# --- review requests ---------------------------------------------------------------------


def _requests() -> QuerySet[ReviewRequest]:
    return ReviewRequest.objects.select_related(
        "squad", "template", "version", "version__author", "opened_by", "superseded_by__version"
    )


def review_request_get_for_user(*, user: User, squad: Squad, pk: int) -> ReviewRequest:
    """One request with its reviewers and every decision (current and retired, oldest
    first, each with its reviewer): four queries."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    review = (
        _requests()
        .filter(squad_id=squad.pk, pk=pk)
        .prefetch_related(
            Prefetch(
                "decisions",
                queryset=ReviewDecision.objects.select_related("reviewer").order_by(
                    "created_at", "pk"
                ),
            ),
            Prefetch("reviewers", queryset=get_user_model().objects.order_by("username")),
        )
        .first()
    )
    if review is None:
        raise NotFound(f"Review request #{pk} not found in squad '{squad.slug}'.")
    return review


def review_request_list_for_user(
    *,
    user: User,
    squad: Squad,
    state: str | None = None,
    template: PromptTemplate | None = None,
) -> QuerySet[ReviewRequest]:
    """The squad's requests, newest first, with their reviewers (two queries)."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    requests = _requests().filter(squad_id=squad.pk)
    if state:
        if state not in State.values:
            raise ValidationFailed(
                f"Unknown state '{state}'; states are {', '.join(State.values)}.", field="state"
            )
        requests = requests.filter(state=state)
    if template is not None:
        requests = requests.filter(template_id=template.pk)
    return requests.prefetch_related(
        Prefetch("reviewers", queryset=get_user_model().objects.order_by("username"))
    ).order_by("-created_at", "-pk")


def review_request_for_version(*, user: User, version: PromptVersion) -> ReviewRequest | None:
    """The version's latest request: its holding one when it has one (a version never gets
    a new request while one holds), else the last withdrawn or superseded one."""
    require_squad_permission(user, version.template.squad, VIEW_SQUAD)
    return _requests().filter(version_id=version.pk).order_by("-created_at", "-pk").first()


def review_request_previous_base(
    *, user: User, review: ReviewRequest
) -> tuple[PromptVersion, str] | None:
    """The older version of the same prompt to diff against for "changes since your last
    review": the latest older version the user decided on; for someone who never reviewed
    this prompt, the latest older version on which changes were requested. The second
    item says which ("your last review" or "changes requested")."""
    require_squad_permission(user, review.squad, VIEW_SQUAD)
    older = ReviewDecision.objects.filter(
        request__template_id=review.template_id,
        request__version__number__lt=review.version.number,
    ).select_related("request__version")
    mine = older.filter(reviewer_id=user.pk).order_by("-request__version__number", "-pk").first()
    if mine is not None:
        return mine.request.version, "your last review"
    asked = (
        older.filter(verdict=Verdict.REQUEST_CHANGES)
        .order_by("-request__version__number", "-pk")
        .first()
    )
    if asked is not None:
        return asked.request.version, "changes requested"
    return None


def label_previous_version(
    *, user: User, template: PromptTemplate, name: str, version: PromptVersion
) -> PromptVersion | None:
    """The version label `name` pointed at before it was last moved to `version` (None
    when it never was, or pointed nowhere before)."""
    require_squad_permission(user, template.squad, VIEW_SQUAD)
    move = (
        LabelMove.objects.filter(
            label__template_id=template.pk, label__name=name, to_version=version
        )
        .select_related("from_version")
        .order_by("-moved_at", "-pk")
        .first()
    )
    return move.from_version if move is not None else None


def review_request_label_diffs(*, user: User, review: ReviewRequest) -> list[dict[str, Any]]:
    """For each protected label of the squad: the version behind it and a summary of the
    diff from it to the reviewed version (None when the label points nowhere yet). Once
    the label points at the reviewed version, the diff is from the version it pointed at
    before (`compared_with`), as on the request's page."""
    squad = review.squad
    require_squad_permission(user, squad, VIEW_SQUAD)
    protected = list(squad.protected_labels or [])
    behind = {
        label.name: label.version
        for label in Label.objects.filter(
            template_id=review.template_id, name__in=protected
        ).select_related("version")
    }
    out = []
    for name in protected:
        old = behind.get(name)
        entry: dict[str, Any] = {"label": name, "version": old.number if old else None}
        same = old is not None and old.pk == review.version_id
        if same:
            base = label_previous_version(
                user=user, template=review.template, name=name, version=review.version
            )
            old = base or old
        entry["compared_with"] = old.number if old else None
        if old is None:
            entry["diff"] = None
        else:
            diff = version_diff(old, review.version)
            entry["diff"] = {
                "same_version": same,
                "messages_changed": [m["index"] for m in diff["messages"] if m["changed"]],
                "config_changed": [c["key"] for c in diff["config"]],
                "schema_changes": diff["schema_changes"],
                "breaking": diff["breaking"],
            }
        out.append(entry)
    return out


# --- the inbox -----------------------------------------------------------------------------


def _may_decide(roles: Iterable[str]) -> bool:
    return any(DECIDE_REVIEW.codename in role_permissions(r) for r in roles)


def _deciding_roles(*, user: User, squad: Squad | None) -> dict[int, list[str]]:
    """squad id -> the user's roles, for the squads where a role lets them decide."""
    if not user.is_authenticated:
        return {}
    memberships = Membership.objects.filter(user_id=user.pk)
    if squad is not None:
        memberships = memberships.filter(squad_id=squad.pk)
    return {
        squad_id: list(roles)
        for squad_id, roles in memberships.values_list("squad_id", "roles")
        if _may_decide(roles)
    }


def _candidates(*, user: User, squad_ids: Iterable[int]) -> QuerySet[ReviewRequest]:
    """Open requests (or changes requested when that does not block) in those squads, on
    versions the user did not write, without a current decision of theirs."""
    decided = ReviewDecision.objects.filter(
        request_id=OuterRef("pk"), reviewer_id=user.pk, is_current=True
    )
    return (
        ReviewRequest.objects.filter(squad_id__in=list(squad_ids))
        .filter(Q(state=State.OPEN) | Q(state=State.CHANGES_REQUESTED, policy__changes_block=False))
        .exclude(version__author_id=user.pk)
        .exclude(Exists(decided))
        .order_by("created_at", "pk")
    )


def _waiting(*, user: User, roles_by_squad: dict[int, list[str]]) -> list[tuple[int, int, str]]:
    """(request id, squad id, reason) for each candidate request waiting for the user, in
    one query (one row per current approval): they are a named reviewer ("named") or their
    approval would fill a slot still missing ("role")."""
    named = ReviewRequest.reviewers.through.objects.filter(
        reviewrequest_id=OuterRef("pk"), user_id=user.pk
    )
    rows = (
        _candidates(user=user, squad_ids=roles_by_squad)
        .annotate(
            approval=FilteredRelation(
                "decisions",
                condition=Q(decisions__is_current=True, decisions__verdict=Verdict.APPROVE),
            ),
            is_named=Exists(named),
        )
        .values_list(
            "pk",
            "squad_id",
            "policy",
            "version__author_id",
            "is_named",
            "approval__reviewer_id",
            "approval__roles",
        )
    )
    candidates: dict[int, dict[str, Any]] = {}
    approvals: defaultdict[int, list[Vote]] = defaultdict(list)
    for pk, squad_id, policy, author_id, is_named, reviewer_id, roles in rows:
        candidates.setdefault(
            pk, {"squad_id": squad_id, "policy": policy, "author": author_id, "named": is_named}
        )
        if reviewer_id is not None:
            approvals[pk].append(Vote(reviewer_id, Verdict.APPROVE, tuple(roles or ())))
    waiting = []
    for pk, c in candidates.items():
        if c["named"]:
            waiting.append((pk, c["squad_id"], "named"))
        elif approval_would_count(
            policy=c["policy"],
            author_id=c["author"],
            votes=approvals[pk],
            reviewer_id=user.pk,
            roles=roles_by_squad[c["squad_id"]],
        ):
            waiting.append((pk, c["squad_id"], "role"))
    return waiting


def inbox_for_user(*, user: User, squad: Squad | None = None) -> list[ReviewRequest]:
    """Requests waiting for the user's decision across their squads (or in one), oldest
    first: open (or changes requested when that does not block), on a version they did not
    write, without a decision of theirs, in a squad where they may decide, and either
    naming them as a reviewer or missing an approval their role would give. Each carries
    `inbox_reason`: "named" or "role". Three queries, whatever the number of requests."""
    roles_by_squad = _deciding_roles(user=user, squad=squad)
    if not roles_by_squad:
        return []
    reasons = {pk: reason for pk, _, reason in _waiting(user=user, roles_by_squad=roles_by_squad)}
    if not reasons:
        return []
    # The candidates again rather than pk__in: a list of ids would be split into batches
    # on SQLite past 999 of them.
    items = []
    for review in _candidates(user=user, squad_ids=roles_by_squad).select_related(
        "squad", "template", "version", "version__author", "opened_by"
    ):
        if review.pk in reasons:
            review.inbox_reason = reasons[review.pk]
            items.append(review)
    return items


def inbox_counts_for_user(
    *, user: User, roles_by_squad: dict[int, list[str]] | None = None
) -> dict[int, int]:
    """squad id -> number of requests waiting for the user (two queries, one when they may
    decide nowhere; for the navigation). A caller that already read the user's memberships
    passes their roles by squad id and saves the first query."""
    if roles_by_squad is None:
        roles_by_squad = _deciding_roles(user=user, squad=None)
    elif user.is_authenticated:
        roles_by_squad = {
            pk: list(roles) for pk, roles in roles_by_squad.items() if _may_decide(roles)
        }
    else:
        roles_by_squad = {}
    if not roles_by_squad:
        return {}
    return dict(
        Counter(squad_id for _, squad_id, _ in _waiting(user=user, roles_by_squad=roles_by_squad))
    )


# --- comments ------------------------------------------------------------------------------


def comment_thread_list_for_user(*, user: User, version: PromptVersion) -> QuerySet[ReviewComment]:
    """The version's threads (root comments, oldest first) with their replies and authors
    prefetched: two queries."""
    require_squad_permission(user, version.template.squad, VIEW_SQUAD)
    return (
        ReviewComment.objects.filter(version_id=version.pk, parent__isnull=True)
        .select_related("author", "resolved_by")
        .prefetch_related(
            Prefetch(
                "replies",
                queryset=ReviewComment.objects.select_related("author").order_by(
                    "created_at", "pk"
                ),
            )
        )
        .order_by("created_at", "pk")
    )


def comment_get_for_user(
    *,
    user: User,
    pk: int,
    squad: Squad | None = None,
    version: PromptVersion | None = None,
) -> ReviewComment:
    """One comment of the squad (or of the version), with its version, template and squad."""
    if version is not None:
        squad = version.template.squad
    if squad is None:
        raise TypeError("comment_get_for_user needs a squad or a version")
    require_squad_permission(user, squad, VIEW_SQUAD)
    comments = ReviewComment.objects.select_related(
        "version", "version__template", "version__template__squad", "author"
    ).filter(squad_id=squad.pk, pk=pk)
    if version is not None:
        comments = comments.filter(version_id=version.pk)
    comment = comments.first()
    if comment is None:
        where = f"version {version.number}" if version is not None else f"squad '{squad.slug}'"
        raise NotFound(f"Comment #{pk} not found on {where}.", field="comment")
    return comment


# --- notifications -------------------------------------------------------------------------


def notification_list_for_user(*, user: User, unread: bool = False) -> QuerySet[Notification]:
    """The user's notifications, newest first (one query)."""
    if not user.is_authenticated:
        return Notification.objects.none()
    notifications = Notification.objects.filter(user_id=user.pk).select_related("squad")
    if unread:
        notifications = notifications.filter(read_at__isnull=True)
    return notifications.order_by("-created_at", "-pk")


def notification_unread_count(*, user: User) -> int:
    if not user.is_authenticated:
        return 0
    return Notification.objects.filter(user_id=user.pk, read_at__isnull=True).count()


# --- users -----------------------------------------------------------------------------------


def reviewers_by_username(*, usernames: list[str]) -> list[AbstractBaseUser]:
    """Active users by username, in the order given; ValidationFailed names the first
    unknown one (the service then checks membership and roles)."""
    wanted = list(dict.fromkeys(u.strip() for u in usernames if u.strip()))
    found = {
        u.get_username(): u
        for u in get_user_model().objects.filter(username__in=wanted, is_active=True)
    }
    for name in wanted:
        if name not in found:
            raise ValidationFailed(f"No active user named '{name}'.", field="reviewers")
    return [found[name] for name in wanted]
