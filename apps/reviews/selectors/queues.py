"""Reads of output review queues. Each one checks permission first and answers 404 for
missing and hidden alike; pages cost a fixed number of queries whatever the queue's size
(the dashboard reads `ReviewQueue.stats`, lists page by id, never by OFFSET)."""

from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Left
from django.utils import timezone

from apps.core.exceptions import NotFound, ValidationFailed
from apps.generation.models import Generation
from apps.reviews.agreement import Accumulator, value_key
from apps.reviews.models import (
    Annotation,
    ReviewAssignment,
    ReviewExport,
    ReviewItem,
    ReviewQueue,
)
from apps.reviews.services.queues import empty_stats, queue_items
from apps.squads.access import has_squad_permission, require_squad_permission, squad_roles
from apps.squads.models import Squad
from apps.squads.permissions import (
    ADJUDICATE_OUTPUTS,
    ANNOTATE_OUTPUTS,
    EXPORT_REVIEWED_OUTPUTS,
    MANAGE_REVIEW_QUEUES,
    VIEW_SQUAD,
)

User = AbstractBaseUser | AnonymousUser
DISAGREEMENTS_SHOWN = 50
PAGE_MAX = 200
PREVIEW_CHARS = 200
ITEM_STATES = ("all", "open", "disagreement")


def review_queue_list_for_user(
    *, user: User, squad: Squad, include_archived: bool = False
) -> QuerySet[ReviewQueue]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    queues = ReviewQueue.objects.filter(squad=squad).select_related("squad", "created_by")
    if not include_archived:
        queues = queues.filter(archived_at__isnull=True)
    return queues.order_by("name")


def review_queue_get_for_user(*, user: User, squad: Squad, slug: str) -> ReviewQueue:
    require_squad_permission(user, squad, VIEW_SQUAD)
    queue = (
        ReviewQueue.objects.select_related("squad", "created_by")
        .filter(squad=squad, slug=slug)
        .first()
    )
    if queue is None:
        raise NotFound(f"Review queue '{slug}' not found in squad '{squad.slug}'.")
    return queue


@dataclass(frozen=True)
class ItemPage:
    items: list[ReviewItem]
    # Pass as `after` for the next page; None on the last page.
    next_after: int | None


def review_item_list_for_user(
    *, user: User, queue: ReviewQueue, after: int = 0, limit: int = 50, state: str = "all"
) -> ItemPage:
    """Items by id after `after` (keyset paging). state: all, open (still short of
    `overlap` reviewers) or disagreement (open disagreements)."""
    require_squad_permission(user, queue.squad, VIEW_SQUAD)
    if state not in ITEM_STATES:
        raise ValidationFailed(
            f"state must be one of {', '.join(ITEM_STATES)} (got {state!r}).", field="state"
        )
    if not 1 <= limit <= PAGE_MAX:
        raise ValidationFailed(f"limit must be 1 to {PAGE_MAX} (got {limit}).", field="limit")
    items = queue_items(queue).filter(pk__gt=after)
    if state == "open":
        items = items.filter(is_full=False)
    elif state == "disagreement":
        items = items.filter(disagreement=True)
    page = list(items.select_related("prompt_version__template")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return ItemPage(items=page, next_after=page[-1].pk if more else None)


def _sees_all_annotations(user: User, queue: ReviewQueue) -> bool:
    return has_squad_permission(user, queue.squad, ADJUDICATE_OUTPUTS) or has_squad_permission(
        user, queue.squad, MANAGE_REVIEW_QUEUES
    )


def review_item_get_for_user(*, user: User, queue: ReviewQueue, item_id: int) -> ReviewItem:
    """The item with `annotations` prefetched (reviewer included). Reviewing is blind:
    who may adjudicate or manage queues sees every annotation; anyone else only their
    own, so one annotator's judgement cannot steer the next."""
    require_squad_permission(user, queue.squad, VIEW_SQUAD)
    annotations = Annotation.objects.select_related("reviewer").order_by("created_at", "pk")
    if not _sees_all_annotations(user, queue):
        annotations = annotations.filter(reviewer_id=user.pk)
    item = (
        ReviewItem.objects.select_related(
            "queue__squad", "prompt_version__template", "adjudicated_by"
        )
        .prefetch_related(Prefetch("annotations", queryset=annotations))
        .filter(queue=queue, pk=item_id)
        .first()
    )
    if item is None:
        raise NotFound(f"Item {item_id} not found in review queue '{queue.slug}'.")
    return item


def generations_for_review(*, user: User, squad: Squad, ids: list[int]) -> list[Generation]:
    """The squad's generations with these ids, in the order given; 404 names the first
    id that is missing or in another squad."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    found = {g.pk: g for g in Generation.objects.filter(squad=squad, pk__in=set(ids))}
    missing = [pk for pk in ids if pk not in found]
    if missing:
        raise NotFound(
            f"Generation(s) {', '.join(map(str, missing[:20]))} not found in squad '{squad.slug}'.",
            field="generations",
        )
    return [found[pk] for pk in ids]


def review_export_list_for_user(*, user: User, queue: ReviewQueue) -> QuerySet[ReviewExport]:
    require_squad_permission(user, queue.squad, EXPORT_REVIEWED_OUTPUTS)
    return ReviewExport.objects.filter(queue=queue).select_related("created_by").order_by("-pk")


def review_export_get_for_user(*, user: User, queue: ReviewQueue, export_id: int) -> ReviewExport:
    export = review_export_list_for_user(user=user, queue=queue).filter(pk=export_id).first()
    if export is None:
        raise NotFound(f"Export {export_id} not found in review queue '{queue.slug}'.")
    return export


# --- dashboard ----------------------------------------------------------------------------


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _number(key: str) -> int | float:
    value = float(key)
    return int(value) if value.is_integer() else value


def _distribution(score: dict[str, Any], histogram: dict[str, int]) -> list[dict[str, Any]]:
    if score["kind"] == "categorical":
        values: list[Any] = list(score["options"])
    elif score["kind"] == "boolean":
        values = [True, False]
    else:
        values = sorted(_number(k) for k in histogram)
    return [{"value": v, "count": histogram.get(value_key(v), 0)} for v in values]


def review_queue_dashboard(*, user: User, queue: ReviewQueue) -> dict[str, Any]:
    """Progress, approval rates, score distributions and agreement, from the queue's
    running statistics, plus the first DISAGREEMENTS_SHOWN open disagreements. Two
    queries (reviewer names, disagreement items) at any queue size."""
    require_squad_permission(user, queue.squad, VIEW_SQUAD)
    stats = {**empty_stats(queue.rubric), **(queue.stats or {})}
    reviewer_ids = [int(pk) for pk in stats["reviewers"]]
    names = dict(get_user_model().objects.filter(pk__in=reviewer_ids).values_list("pk", "username"))
    reviewers = sorted(
        (
            {
                "username": names.get(int(pk), f"user {pk}"),
                "annotated": r["annotated"],
                "approved": r["approved"],
                "approval_rate": _ratio(r["approved"], r["annotated"]),
                "edited": r["edited"],
                "seconds": r["seconds"],
                "mean_seconds": _ratio(r["seconds"], r["annotated"]),
            }
            for pk, r in stats["reviewers"].items()
        ),
        key=lambda r: (-r["annotated"], r["username"]),
    )
    by_count = {int(c): n for c, n in stats["by_count"].items()}
    target = stats["items"] * queue.overlap
    done = sum(min(c, queue.overlap) * n for c, n in by_count.items())
    scores = {s["name"]: s for s in queue.rubric}
    agreement = []
    for name in ["verdict", *scores]:
        score = scores.get(name)
        level = "interval" if score and score["kind"] == "numeric" else "nominal"
        accumulator = Accumulator(level, stats["agreement"][name])
        agreement.append(
            {
                "name": name,
                "label": score["label"] if score else "Verdict",
                "level": level,
                "alpha": accumulator.alpha(),
                "percent": accumulator.percent(),
                "units": accumulator.units,
            }
        )
    disagreements = list(
        queue_items(queue)
        .filter(disagreement=True)
        .annotate(preview=Left("output", PREVIEW_CHARS))
        .values("id", "annotation_count", "approvals", "created_at", "preview")[
            :DISAGREEMENTS_SHOWN
        ]
    )
    annotations = stats["annotations"]
    return {
        "queue": queue.slug,
        "overlap": queue.overlap,
        "items": stats["items"],
        "items_complete": sum(n for c, n in by_count.items() if c >= queue.overlap),
        "items_unreviewed": by_count.get(0, 0),
        "annotations": annotations,
        "annotations_target": target,
        "progress": _ratio(done, target),
        "approval_rate": _ratio(stats["verdicts"].get("approve", 0), annotations),
        "verdicts": {v: stats["verdicts"].get(v, 0) for v in ReviewItem.Verdict.values},
        "edits": {
            "count": stats["edits"]["count"],
            "mean_distance": _ratio(stats["edits"]["distance"], stats["edits"]["count"]),
        },
        "reviewers": reviewers,
        "scores": [
            {
                "name": s["name"],
                "label": s["label"],
                "kind": s["kind"],
                "distribution": _distribution(s, stats["scores"][s["name"]]),
            }
            for s in queue.rubric
        ],
        "agreement": agreement,
        "items_multi": stats["multi"],
        "disagreements": stats["disagreements"],
        "adjudicated": stats["adjudicated"],
        "disagreement_items": disagreements,
    }


# --- the annotator ------------------------------------------------------------------------

LAST_ID = 2**63 - 1


def can_annotate(*, user: User, queue: ReviewQueue) -> bool:
    """Whether to offer the annotator: what `services.queues.review_annotate` and
    `review_next_item` require (ANNOTATE_OUTPUTS and one of the queue's annotator roles),
    for display only — the services decide."""
    return has_squad_permission(user, queue.squad, ANNOTATE_OUTPUTS) and bool(
        set(squad_roles(user, queue.squad_id)) & set(queue.annotator_roles)
    )


@dataclass(frozen=True)
class AnnotatorProgress:
    done: int  # items this reviewer annotated in the queue
    left: int  # items still open for them, the one on screen included
    position: int  # the item on screen, counted like "3 of 7"

    @property
    def total(self) -> int:
        return self.done + self.left


def annotator_progress_for_user(
    *, user: User, queue: ReviewQueue, item: ReviewItem | None
) -> AnnotatorProgress:
    """Where the reviewer is in the queue: the items they annotated, and those still open
    for them (short of the queue's overlap and never claimed by them, plus those they
    hold a claim on, such as the one on screen). "Left" can only shrink faster than they
    work, as other reviewers fill items. Two counts (three for an item they annotated
    before), on the annotation_queue_reviewer and review_item_open indexes."""
    require_squad_permission(user, queue.squad, VIEW_SQUAD)
    # An annotation always leaves a completed assignment behind (services.queues).
    finished = Q(completed_at__isnull=False)
    counts = ReviewAssignment.objects.filter(queue=queue, reviewer_id=user.pk).aggregate(
        done=Count("pk", filter=finished),
        claims=Count("pk", filter=Q(completed_at__isnull=True, expires_at__gt=timezone.now())),
        here=Count("pk", filter=finished & Q(item_id=item.pk if item else None)),
    )
    done = counts["done"]
    held = ReviewAssignment.objects.filter(item=OuterRef("pk"), reviewer_id=user.pk)
    unclaimed = queue_items(queue).filter(is_full=False).filter(~Exists(held)).count()
    left = unclaimed + counts["claims"]
    on_screen = item is not None and not counts["here"]
    if item is None or not on_screen:
        position = done if item is None else _annotated_position(user, queue, item, done)
    else:
        position = done + 1
    return AnnotatorProgress(done=done, left=left, position=position)


def _annotated_position(user: User, queue: ReviewQueue, item: ReviewItem, done: int) -> int:
    """The place of an item the reviewer already annotated, in the order they did."""
    mine = Annotation.objects.filter(queue=queue, reviewer_id=user.pk)
    anchor = Subquery(mine.filter(item_id=item.pk).values("pk")[:1])
    return mine.filter(pk__lte=anchor).count() or done


def review_item_previous_for_user(
    *, user: User, queue: ReviewQueue, before: int | None = None
) -> ReviewItem | None:
    """The item the user annotated before they annotated item `before` — their latest
    annotated item when they have not annotated `before` (or without it) — with only their
    own annotation prefetched; None when there is none. Order: when each item was first
    annotated (annotation ids), so replacing an annotation keeps its place. Two queries."""
    require_squad_permission(user, queue.squad, VIEW_SQUAD)
    mine = Annotation.objects.filter(queue=queue, reviewer_id=user.pk)
    earlier = mine
    if before is not None:
        anchor = Subquery(mine.filter(item_id=before).values("pk")[:1])
        earlier = mine.filter(pk__lt=Coalesce(anchor, Value(LAST_ID)))
    return (
        ReviewItem.objects.filter(
            queue=queue, pk=Subquery(earlier.order_by("-pk").values("item_id")[:1])
        )
        .select_related("prompt_version__template")
        .prefetch_related(Prefetch("annotations", queryset=mine.order_by("pk")))
        .first()
    )
