"""Output review queues: every write (queues, items, claims, annotations, adjudication, export).

Locking, in this order wherever more than one is taken, so no two paths wait on each
other in opposite orders (row locks are FOR NO KEY UPDATE: the foreign-key checks of
inserted assignments and annotations take KEY SHARE on their queue and item, which a
plain FOR UPDATE held by another transaction would block, deadlocking a claimer against
an annotator):

1. the queue row — annotations, adjudications, item additions and queue changes
   (they all move `ReviewQueue.stats`, the dashboard's running counters);
2. item rows — claims (`FOR UPDATE SKIP LOCKED`: a claimer passes over an item
   another transaction holds), releases of expired claims (also skipping), annotation;
3. assignment rows of an item already locked.

"Next item" takes no queue lock, so reviewers claim concurrently; on SQLite the
IMMEDIATE transaction serialises writers instead. Claims are leases, not decisions,
and are not written to the audit log (each audit append takes the chain lock, which
would serialise every claim in the installation); annotations, adjudications,
additions, queue changes and exports are.
"""

import hashlib
import json
import math
import os
import random
import re
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Case, Exists, F, OuterRef, Prefetch, Q, QuerySet, Value, When
from django.http import HttpRequest
from django.utils import timezone
from django.utils.text import slugify
from rapidfuzz.distance import Levenshtein

from apps.audit.services import audit_log
from apps.core.exceptions import ApplicationError, Conflict, PermissionDenied, ValidationFailed
from apps.generation.models import BatchJob, Generation
from apps.prompts.contracts import render_messages
from apps.prompts.models import PromptVersion
from apps.reviews.agreement import Accumulator, value_key
from apps.reviews.models import Annotation, ReviewAssignment, ReviewExport, ReviewItem, ReviewQueue
from apps.squads.access import require_squad_permission, squad_roles
from apps.squads.models import Squad
from apps.squads.permissions import (
    ADJUDICATE_OUTPUTS,
    ANNOTATE_OUTPUTS,
    EXPORT_REVIEWED_OUTPUTS,
    MANAGE_REVIEW_QUEUES,
    Role,
)

User = AbstractBaseUser
NAME_MAX = 100
SLUG_MAX = 80
TEXT_MAX = 5000
INSTRUCTIONS_MAX = 10_000
OUTPUT_MAX = 200_000
MODEL_NAME_MAX = 200
MAX_SCORES = 20
MAX_OPTIONS = 50
MAX_OVERLAP = 10
MAX_ITEMS_PER_REQUEST = 10_000
MAX_SECONDS = 24 * 3600
RELEASE_BATCH = 100  # expired claims released per "next item" call
CHUNK = 2000
SCORE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RESERVED_SCORE_NAMES = frozenset({"verdict"})
SCORE_KEYS = {
    "numeric": {"name", "kind", "label", "description", "required", "min", "max", "step"},
    "categorical": {"name", "kind", "label", "description", "required", "options"},
    "boolean": {"name", "kind", "label", "description", "required"},
}
APPROVE = ReviewItem.Verdict.APPROVE
REVIEWABLE_STATUSES = (Generation.Status.OK, Generation.Status.INVALID)


@dataclass(frozen=True)
class ItemsAdded:
    """What an addition stored: new item ids, and how many were already in the queue."""

    created: int
    skipped: int
    ids: list[int] = field(default_factory=list)
    seed: int | None = None


# --- validation -------------------------------------------------------------------------


def _refuse(what: str, errors: list[dict[str, str]]) -> None:
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    more = f" ({len(errors)} problems in all)" if len(errors) > 5 else ""
    raise ValidationFailed(
        f"{what} — nothing was stored. {summary}{more}", field=errors[0]["field"], extra=errors
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: int | float) -> int | float:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _clean_name(value: Any) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not name:
        raise ValidationFailed("The queue name must not be empty.", field="name")
    if len(name) > NAME_MAX:
        raise ValidationFailed(
            f"The queue name is {len(name)} characters long; the limit is {NAME_MAX}.",
            field="name",
        )
    return name


def _clean_text(value: Any, *, field: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be text.", field=field)
    if len(value) > limit:
        raise ValidationFailed(
            f"{field} is {len(value)} characters long; the limit is {limit}.", field=field
        )
    return value


def _clean_overlap(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OVERLAP:
        raise ValidationFailed(
            f"overlap (distinct reviewers per item) must be a whole number from 1 to "
            f"{MAX_OVERLAP} (got {value!r}).",
            field="overlap",
        )
    return value


def _clean_annotator_roles(roles: Any) -> list[str]:
    if not isinstance(roles, list | tuple) or not roles:
        raise ValidationFailed(
            "annotator_roles must name at least one role that may annotate.",
            field="annotator_roles",
        )
    allowed = [r for r in Role.values if r != Role.VIEWER]
    unknown = [r for r in roles if r not in allowed]
    if unknown:
        raise ValidationFailed(
            f"annotator_roles: {', '.join(map(repr, unknown))} cannot annotate; choose from "
            f"{', '.join(allowed)} (viewers only read).",
            field="annotator_roles",
        )
    return [r for r in allowed if r in roles]


def clean_rubric(rubric: Any) -> list[dict[str, Any]]:
    """The rubric in its stored form, or ValidationFailed listing every problem by
    `rubric[i].field`."""
    if not isinstance(rubric, list):
        raise ValidationFailed("rubric must be a list of score configurations.", field="rubric")
    if len(rubric) > MAX_SCORES:
        raise ValidationFailed(
            f"The rubric has {len(rubric)} scores; the limit is {MAX_SCORES}.", field="rubric"
        )
    errors: list[dict[str, str]] = []
    clean: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, entry in enumerate(rubric):
        where = f"rubric[{i}]"

        def error(key: str, message: str, where: str = where) -> None:
            errors.append({"field": f"{where}.{key}" if key else where, "message": message})

        if not isinstance(entry, dict):
            error("", "must be an object with a name and a kind")
            continue
        name, kind = entry.get("name"), entry.get("kind")
        if not isinstance(name, str) or not SCORE_NAME_RE.match(name):
            error(
                "name",
                "must be 1–40 lowercase letters, digits or '_', starting with a letter "
                f"(got {name!r})",
            )
        elif name in RESERVED_SCORE_NAMES:
            error("name", f"'{name}' is reserved for the approve/reject verdict")
        elif name in seen:
            error("name", f"'{name}' is already the name of an earlier score")
        else:
            seen.add(name)
        if kind not in SCORE_KEYS:
            error("kind", f"must be numeric, categorical or boolean (got {kind!r})")
            continue
        for key in sorted(set(entry) - SCORE_KEYS[kind]):
            error(key, f"is not a setting of a {kind} score")
        label = entry.get("label", name)
        if not isinstance(label, str) or not 0 < len(label.strip()) <= 100:
            error("label", "must be 1–100 characters")
        description = entry.get("description", "")
        if not isinstance(description, str) or len(description) > 500:
            error("description", "must be text of at most 500 characters")
        required = entry.get("required", False)
        if not isinstance(required, bool):
            error("required", f"must be true or false (got {required!r})")
        score: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "label": label.strip() if isinstance(label, str) else label,
            "description": description,
            "required": required,
        }
        if kind == "numeric":
            low, high, step = entry.get("min"), entry.get("max"), entry.get("step")
            if not _is_number(low):
                error("min", f"must be a number (got {low!r})")
            if not _is_number(high):
                error("max", f"must be a number (got {high!r})")
            if _is_number(low) and _is_number(high) and not low < high:
                error("max", f"must be greater than min (got min {low}, max {high})")
            if step is not None:
                if not _is_number(step) or step <= 0:
                    error("step", f"must be a positive number (got {step!r})")
                elif _is_number(low) and _is_number(high) and step > high - low:
                    error("step", f"must not exceed max − min ({high - low})")
            score.update(min=_whole(low) if _is_number(low) else low)
            score.update(max=_whole(high) if _is_number(high) else high)
            if step is not None:
                score["step"] = _whole(step) if _is_number(step) else step
        elif kind == "categorical":
            options = entry.get("options")
            if (
                not isinstance(options, list)
                or not 2 <= len(options) <= MAX_OPTIONS
                or not all(isinstance(o, str) and 0 < len(o.strip()) <= 100 for o in options)
            ):
                error(
                    "options",
                    f"must be a list of 2 to {MAX_OPTIONS} non-empty strings (at most 100 "
                    "characters each)",
                )
            else:
                stripped = [o.strip() for o in options]
                repeated = sorted({o for o in stripped if stripped.count(o) > 1})
                if repeated:
                    error("options", f"repeat {', '.join(map(repr, repeated))}")
                score["options"] = stripped
        clean.append(score)
    if errors:
        _refuse(f"The rubric has {len(errors)} problem(s)", errors)
    return clean


def _score_value(score: dict[str, Any], value: Any) -> tuple[Any, str | None]:
    """(normalised value, problem) for one score."""
    kind = score["kind"]
    if kind == "numeric":
        if not _is_number(value) or not score["min"] <= value <= score["max"]:
            return value, f"must be a number from {score['min']} to {score['max']} (got {value!r})"
        step = score.get("step")
        if step is not None:
            steps = (value - score["min"]) / step
            if abs(steps - round(steps)) > 1e-9:
                return value, f"must be {score['min']} plus a multiple of {step} (got {value!r})"
        return _whole(value), None
    if kind == "categorical":
        if value not in score["options"]:
            return value, f"must be one of {', '.join(score['options'])} (got {value!r})"
        return value, None
    if not isinstance(value, bool):
        return value, f"must be true or false (got {value!r})"
    return value, None


def clean_scores(rubric: list[dict[str, Any]], scores: Any) -> dict[str, Any]:
    """Scores checked against the rubric; ValidationFailed names each `scores.<name>`."""
    if scores is None:
        scores = {}
    if not isinstance(scores, dict):
        raise ValidationFailed("scores must be an object of score name → value.", field="scores")
    names = [s["name"] for s in rubric]
    errors = [
        {
            "field": f"scores.{name}",
            "message": f"is not in the rubric (its scores: {', '.join(names) or 'none'})",
        }
        for name in scores
        if name not in names
    ]
    clean: dict[str, Any] = {}
    for score in rubric:
        value = scores.get(score["name"])
        if value is None:
            if score["required"]:
                errors.append({"field": f"scores.{score['name']}", "message": "is required"})
            continue
        value, problem = _score_value(score, value)
        if problem:
            errors.append({"field": f"scores.{score['name']}", "message": problem})
        else:
            clean[score["name"]] = value
    if errors:
        _refuse(f"{len(errors)} score(s) refused", errors)
    return clean


def _clean_verdict(verdict: Any) -> str:
    if verdict not in ReviewItem.Verdict.values:
        raise ValidationFailed(
            f"verdict must be approve or reject (got {verdict!r}).", field="verdict"
        )
    return verdict


def _clean_output(value: Any, *, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(f"{field} must be non-empty text.", field=field)
    if len(value) > OUTPUT_MAX:
        raise ValidationFailed(
            f"{field} is {len(value)} characters long; the limit is {OUTPUT_MAX}.", field=field
        )
    return value


# --- locks, permissions, statistics -------------------------------------------------------


def queue_items(queue: ReviewQueue) -> QuerySet[ReviewItem]:
    """The queue's items in id order, phrased so that PostgreSQL walks a (queue, id) index.

    `queue_id BETWEEN q AND q`, not `= q`: with an equality PostgreSQL may take ORDER BY
    id from the primary key and filter its way to the first match, cheap by its row
    estimates, which cannot see that full items (and other queues' items) cluster ahead
    of it; that cost grows with the queue. Ordered by (queue, id), only the (queue, id)
    indexes — review_item_queue_page, review_item_open, review_item_disagreement — give
    the order, so a claim or a page reads a few index entries at any size."""
    return ReviewItem.objects.filter(queue__pk__range=(queue.pk, queue.pk)).order_by(
        "queue_id", "pk"
    )


def _lock_queue(queue_id: int) -> ReviewQueue:
    return (
        ReviewQueue.objects.select_related("squad")
        .select_for_update(of=("self",), no_key=True)
        .get(pk=queue_id)
    )


def _require_open(queue: ReviewQueue) -> None:
    if queue.archived_at is not None:
        raise Conflict(f"Review queue '{queue.slug}' is archived.", field="queue")


def _require_annotator(actor: User, queue: ReviewQueue) -> None:
    """ANNOTATE_OUTPUTS in the squad and one of the queue's own annotator roles."""
    require_squad_permission(actor, queue.squad, ANNOTATE_OUTPUTS)
    roles = squad_roles(actor, queue.squad_id)
    if not set(roles) & set(queue.annotator_roles):
        raise PermissionDenied(
            f"Review queue '{queue.slug}' is annotated by {', '.join(queue.annotator_roles)}; "
            f"your roles in squad '{queue.squad.slug}' are {', '.join(roles) or 'none'}."
        )


def _score_level(score: dict[str, Any]) -> Literal["nominal", "interval"]:
    return "interval" if score["kind"] == "numeric" else "nominal"


def empty_stats(rubric: list[dict[str, Any]]) -> dict[str, Any]:
    """The counters behind the dashboard, for a queue with no items.

    items: items in the queue; by_count: {annotations per item: items};
    annotations, verdicts {verdict: n}, reviewers {user id: {annotated, approved,
    seconds, edited}}, edits {count, distance}; scores {name: {value: n}};
    agreement {"verdict" | score name: agreement.Accumulator state}; multi: items with
    ≥ 2 annotations; disagreements: open (unadjudicated) disagreements; adjudicated."""
    return {
        "items": 0,
        "by_count": {},
        "annotations": 0,
        "verdicts": {},
        "reviewers": {},
        "edits": {"count": 0, "distance": 0},
        "scores": {s["name"]: {} for s in rubric},
        "agreement": {
            "verdict": Accumulator.empty("nominal"),
            **{s["name"]: Accumulator.empty(_score_level(s)) for s in rubric},
        },
        "multi": 0,
        "disagreements": 0,
        "adjudicated": 0,
    }


def _stats(queue: ReviewQueue) -> dict[str, Any]:
    return {**empty_stats(queue.rubric), **(queue.stats or {})}


def _bump(counter: dict[str, int], key: str, by: int) -> None:
    value = counter.get(key, 0) + by
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)


def _apply_annotations(
    stats: dict[str, Any], rubric: list[dict[str, Any]], annotations: Sequence[Any], sign: int
) -> None:
    """Add (sign=1) or take back (sign=-1) one item's annotations: the item is one unit
    of every agreement accumulator. `annotations` need reviewer_id, verdict, scores,
    seconds_spent and edit_distance."""
    count = len(annotations)
    _bump(stats["by_count"], str(count), sign)
    stats["annotations"] += sign * count
    if count >= 2:
        stats["multi"] += sign
    for a in annotations:
        reviewer = stats["reviewers"].setdefault(
            str(a.reviewer_id), {"annotated": 0, "approved": 0, "seconds": 0, "edited": 0}
        )
        reviewer["annotated"] += sign
        reviewer["approved"] += sign * (a.verdict == APPROVE)
        reviewer["seconds"] += sign * a.seconds_spent
        reviewer["edited"] += sign * (a.edit_distance is not None)
        if not reviewer["annotated"]:
            del stats["reviewers"][str(a.reviewer_id)]
        _bump(stats["verdicts"], a.verdict, sign)
        if a.edit_distance is not None:
            stats["edits"]["count"] += sign
            stats["edits"]["distance"] += sign * a.edit_distance
        for score in rubric:
            value = a.scores.get(score["name"])
            if value is not None:
                _bump(stats["scores"][score["name"]], value_key(value), sign)
    units = [("verdict", "nominal", [a.verdict for a in annotations])] + [
        (s["name"], _score_level(s), [a.scores.get(s["name"]) for a in annotations]) for s in rubric
    ]
    for name, level, values in units:
        accumulator = Accumulator(level, stats["agreement"][name])
        if sign > 0:
            accumulator.add_unit(values)
        else:
            accumulator.remove_unit(values)


def _apply_flags(
    stats: dict[str, Any], *, disagreement: bool, adjudicated: bool, sign: int
) -> None:
    stats["disagreements"] += sign * disagreement
    stats["adjudicated"] += sign * adjudicated


def _disagrees(rubric: list[dict[str, Any]], annotations: Sequence[Any]) -> bool:
    """Two or more annotators differ on the verdict or on any score both gave."""
    if len(annotations) < 2:
        return False
    if len({a.verdict for a in annotations}) > 1:
        return True
    for score in rubric:
        given = {
            value_key(v) for a in annotations if (v := a.scores.get(score["name"])) is not None
        }
        if len(given) > 1:
            return True
    return False


# --- queues -----------------------------------------------------------------------------


def _slug_for(name: str) -> str:
    slug = slugify(name)[:SLUG_MAX].strip("-")
    if not slug:
        raise ValidationFailed(
            f"The queue name '{name}' needs at least one letter or digit (it becomes the "
            "queue's address).",
            field="name",
        )
    return slug


def _name_taken(squad: Squad, name: str, slug: str | None, exclude: int | None = None) -> None:
    others = ReviewQueue.objects.filter(squad=squad).exclude(pk=exclude)
    clash = others.filter(Q(name__iexact=name) | Q(slug=slug or "")).first()
    if clash is not None:
        raise Conflict(
            f"Squad '{squad.slug}' already has a review queue named '{clash.name}' "
            f"(address '{clash.slug}').",
            field="name",
        )


@transaction.atomic
def review_queue_create(
    *,
    actor: User,
    squad: Squad,
    name: str,
    instructions: str = "",
    rubric: list[dict[str, Any]],
    overlap: int = 1,
    annotator_roles: list[str],
    request: HttpRequest | None = None,
) -> ReviewQueue:
    """A queue whose address (slug) comes from its name and stays when it is renamed."""
    require_squad_permission(actor, squad, MANAGE_REVIEW_QUEUES)
    name = _clean_name(name)
    slug = _slug_for(name)
    instructions = _clean_text(instructions, field="instructions", limit=INSTRUCTIONS_MAX)
    rubric = clean_rubric(rubric)
    overlap = _clean_overlap(overlap)
    roles = _clean_annotator_roles(annotator_roles)
    _name_taken(squad, name, slug)
    try:
        with transaction.atomic():
            queue = ReviewQueue.objects.create(
                squad=squad,
                name=name,
                slug=slug,
                instructions=instructions,
                rubric=rubric,
                overlap=overlap,
                annotator_roles=roles,
                stats=empty_stats(rubric),
                created_by=actor,
            )
    except IntegrityError as exc:  # a concurrent create took the slug
        raise Conflict(
            f"Squad '{squad.slug}' already has a review queue at '{slug}'.", field="name"
        ) from exc
    audit_log(
        actor=actor,
        action="review.queue_created",
        squad=squad,
        target=queue,
        data={
            "name": name,
            "slug": slug,
            "rubric": rubric,
            "overlap": overlap,
            "annotator_roles": roles,
        },
        request=request,
    )
    return queue


@transaction.atomic
def review_queue_update(
    *,
    actor: User,
    queue: ReviewQueue,
    name: str | None = None,
    instructions: str | None = None,
    rubric: list[dict[str, Any]] | None = None,
    overlap: int | None = None,
    annotator_roles: list[str] | None = None,
    archived: bool | None = None,
    request: HttpRequest | None = None,
) -> ReviewQueue:
    """Change what is given (None keeps a field). The rubric is fixed once the queue has
    annotations; a new overlap re-derives which items are full."""
    queue = _lock_queue(queue.pk)
    require_squad_permission(actor, queue.squad, MANAGE_REVIEW_QUEUES)
    changes: dict[str, dict[str, Any]] = {}

    def change(key: str, after: Any) -> None:
        before = getattr(queue, key)
        if before != after:
            changes[key] = {"before": before, "after": after}
            setattr(queue, key, after)

    if name is not None:
        name = _clean_name(name)
        _name_taken(queue.squad, name, None, exclude=queue.pk)
        change("name", name)
    if instructions is not None:
        change(
            "instructions",
            _clean_text(instructions, field="instructions", limit=INSTRUCTIONS_MAX),
        )
    if rubric is not None:
        rubric = clean_rubric(rubric)
        if rubric != queue.rubric:
            if Annotation.objects.filter(queue=queue).exists():
                raise Conflict(
                    f"Review queue '{queue.slug}' has annotations scored against its rubric, "
                    "so the rubric can no longer change; create a new queue instead.",
                    field="rubric",
                )
            change("rubric", rubric)
            queue.stats = {**_stats(queue), **_score_parts(empty_stats(rubric))}
    if overlap is not None:
        change("overlap", _clean_overlap(overlap))
    if annotator_roles is not None:
        change("annotator_roles", _clean_annotator_roles(annotator_roles))
    if archived is not None:
        if not isinstance(archived, bool):
            raise ValidationFailed("archived must be true or false.", field="archived")
        if archived != (queue.archived_at is not None):
            change("archived_at", timezone.now() if archived else None)
    if not changes:
        return queue
    queue.save()
    if "overlap" in changes:
        ReviewItem.objects.filter(queue=queue).update(
            is_full=Case(When(claims__gte=queue.overlap, then=Value(True)), default=Value(False))
        )
    audit_log(
        actor=actor,
        action="review.queue_updated",
        squad=queue.squad,
        target=queue,
        data={"changes": changes},
        request=request,
    )
    return queue


def _score_parts(stats: dict[str, Any]) -> dict[str, Any]:
    return {"scores": stats["scores"], "agreement": stats["agreement"]}


# --- items ------------------------------------------------------------------------------


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _generation_output(generation: Generation) -> str:
    if generation.output_text:
        return generation.output_text
    if generation.output_json is not None:
        return json.dumps(generation.output_json, ensure_ascii=False)
    return ""


def _item_from_generation(
    queue: ReviewQueue, generation: Generation, *, source: str, actor: User
) -> ReviewItem:
    return ReviewItem(
        queue=queue,
        generation_id=generation.pk,
        prompt_version_id=generation.prompt_version_id,
        model_name=generation.target_used[:MODEL_NAME_MAX],
        inputs=generation.variables,
        output=_generation_output(generation),
        source=source,
        batch_job_id=generation.batch_job_id,
        created_by=actor,
    )


def _store_items(
    queue: ReviewQueue,
    items: list[ReviewItem],
    *,
    actor: User,
    skipped: int,
    data: dict[str, Any],
    request: HttpRequest | None,
    seed: int | None = None,
) -> ItemsAdded:
    """Bulk-insert into a locked queue, count the items in its stats, audit."""
    created = ReviewItem.objects.bulk_create(items, batch_size=1000)
    if created:
        stats = _stats(queue)
        stats["items"] += len(created)
        _bump(stats["by_count"], "0", len(created))
        queue.stats = stats
        queue.save(update_fields=["stats"])
    audit_log(
        actor=actor,
        action="review.items_added",
        squad=queue.squad,
        target=queue,
        data={**data, "created": len(created), "skipped": skipped},
        request=request,
    )
    return ItemsAdded(created=len(created), skipped=skipped, ids=[i.pk for i in created], seed=seed)


def _queued_generation_ids(queue: ReviewQueue, ids: Iterable[int]) -> set[int]:
    ids = list(ids)
    found: set[int] = set()
    for chunk in _chunks(ids):
        found.update(
            ReviewItem.objects.filter(queue=queue, generation_id__in=chunk).values_list(
                "generation_id", flat=True
            )
        )
    return found


@transaction.atomic
def review_items_add(
    *,
    actor: User,
    queue: ReviewQueue,
    generations: list[Generation],
    request: HttpRequest | None = None,
) -> ItemsAdded:
    """Add finished (ok or invalid) generations of the queue's squad; generations already
    in the queue are skipped and counted."""
    queue = _lock_queue(queue.pk)
    require_squad_permission(actor, queue.squad, MANAGE_REVIEW_QUEUES)
    _require_open(queue)
    if not generations:
        raise ValidationFailed("Give at least one generation to add.", field="generations")
    if len(generations) > MAX_ITEMS_PER_REQUEST:
        raise ValidationFailed(
            f"{len(generations)} generations; the limit is {MAX_ITEMS_PER_REQUEST} per request.",
            field="generations",
        )
    foreign = [g.pk for g in generations if g.squad_id != queue.squad_id]
    if foreign:
        raise ValidationFailed(
            f"Generation(s) {', '.join(map(str, foreign))} are not in squad '{queue.squad.slug}'.",
            field="generations",
        )
    unfinished = [
        f"{g.pk} ({g.status})" for g in generations if g.status not in REVIEWABLE_STATUSES
    ]
    if unfinished:
        raise ValidationFailed(
            "Only finished generations (ok or invalid) can be reviewed; not "
            f"{', '.join(unfinished)}.",
            field="generations",
        )
    unique = list({g.pk: g for g in generations}.values())
    present = _queued_generation_ids(queue, (g.pk for g in unique))
    items = [
        _item_from_generation(queue, g, source=ReviewItem.Source.MANUAL, actor=actor)
        for g in unique
        if g.pk not in present
    ]
    return _store_items(
        queue,
        items,
        actor=actor,
        skipped=len(generations) - len(items),
        data={"source": ReviewItem.Source.MANUAL, "generations": [g.pk for g in unique][:100]},
        request=request,
    )


@transaction.atomic
def review_items_from_batch(
    *,
    actor: User,
    queue: ReviewQueue,
    batch_job: BatchJob,
    mode: Literal["all", "random", "percent"],
    n: int | None = None,
    percent: float | None = None,
    seed: int | None = None,
    request: HttpRequest | None = None,
) -> ItemsAdded:
    """Add a batch job's succeeded rows: all of them, n drawn at random, or a percentage
    (rounded half up, at least one). Sampling is seeded; without a seed one is drawn, returned
    and audited, so the sample can be drawn again."""
    queue = _lock_queue(queue.pk)
    require_squad_permission(actor, queue.squad, MANAGE_REVIEW_QUEUES)
    _require_open(queue)
    if batch_job.squad_id != queue.squad_id:
        raise ValidationFailed(
            f"Batch {batch_job.pk} is not in squad '{queue.squad.slug}'.", field="batch"
        )
    if mode not in ("all", "random", "percent"):
        raise ValidationFailed(f"mode must be all, random or percent (got {mode!r}).", field="mode")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValidationFailed(f"seed must be a whole number (got {seed!r}).", field="seed")
    ids = list(
        batch_job.generations.filter(status=Generation.Status.OK)
        .order_by("row_index")
        .values_list("pk", flat=True)
    )
    if not ids:
        raise Conflict(f"Batch {batch_job.pk} has no succeeded rows to review.", field="batch")
    sample_size = len(ids)
    if mode == "random":
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValidationFailed(
                f"n must be a whole number of at least 1 for random sampling (got {n!r}).",
                field="n",
            )
        sample_size = min(n, len(ids))
    elif mode == "percent":
        if not _is_number(percent) or not 0 < percent <= 100:
            raise ValidationFailed(
                f"percent must be a number above 0 and at most 100 (got {percent!r}).",
                field="percent",
            )
        sample_size = max(1, math.floor(len(ids) * percent / 100 + 0.5))  # half up
    if mode != "all":
        seed = secrets.randbelow(2**31) if seed is None else seed
        ids = sorted(random.Random(seed).sample(ids, sample_size))
    present = set(
        ReviewItem.objects.filter(queue=queue, generation__batch_job=batch_job).values_list(
            "generation_id", flat=True
        )
    )
    wanted = [pk for pk in ids if pk not in present]
    items = []
    for chunk in _chunks(wanted):
        items += [
            _item_from_generation(queue, g, source=ReviewItem.Source.BATCH, actor=actor)
            for g in Generation.objects.filter(pk__in=chunk).order_by("row_index")
        ]
    return _store_items(
        queue,
        items,
        actor=actor,
        skipped=len(ids) - len(items),
        data={
            "source": ReviewItem.Source.BATCH,
            "batch": batch_job.pk,
            "mode": mode,
            "n": n,
            "percent": percent,
            "seed": seed,
            "sampled": len(ids),
        },
        request=request,
        seed=seed if mode != "all" else None,
    )


EXTERNAL_KEYS = {"inputs", "output", "prompt_version", "model_name"}


@transaction.atomic
def review_items_add_external(
    *,
    actor: User,
    queue: ReviewQueue,
    items: list[dict[str, Any]],
    request: HttpRequest | None = None,
) -> ItemsAdded:
    """Add outputs produced outside Studio: each {"inputs": {...}, "output": "...",
    "prompt_version": {"prompt": slug, "version": n} (optional), "model_name": "..."
    (optional)}. Any bad item refuses the whole request, each problem by `items[i]`."""
    queue = _lock_queue(queue.pk)
    require_squad_permission(actor, queue.squad, MANAGE_REVIEW_QUEUES)
    _require_open(queue)
    if not isinstance(items, list) or not items:
        raise ValidationFailed("Give a non-empty list of items.", field="items")
    if len(items) > MAX_ITEMS_PER_REQUEST:
        raise ValidationFailed(
            f"{len(items)} items; the limit is {MAX_ITEMS_PER_REQUEST} per request.",
            field="items",
        )
    errors: list[dict[str, str]] = []
    wanted_versions: dict[int, tuple[str, int]] = {}
    for i, raw in enumerate(items):
        where = f"items[{i}]"
        if not isinstance(raw, dict):
            errors.append({"field": where, "message": "must be an object with inputs and output"})
            continue
        for key in sorted(set(raw) - EXTERNAL_KEYS):
            errors.append({"field": f"{where}.{key}", "message": "is not an item field"})
        if not isinstance(raw.get("inputs"), dict):
            errors.append({"field": f"{where}.inputs", "message": "must be an object"})
        output = raw.get("output")
        if not isinstance(output, str) or not output.strip():
            errors.append({"field": f"{where}.output", "message": "must be non-empty text"})
        elif len(output) > OUTPUT_MAX:
            errors.append(
                {
                    "field": f"{where}.output",
                    "message": f"is {len(output)} characters long; the limit is {OUTPUT_MAX}",
                }
            )
        model_name = raw.get("model_name", "")
        if not isinstance(model_name, str) or len(model_name) > MODEL_NAME_MAX:
            errors.append(
                {
                    "field": f"{where}.model_name",
                    "message": f"must be text of at most {MODEL_NAME_MAX} characters",
                }
            )
        ref = raw.get("prompt_version")
        if ref is not None:
            if (
                not isinstance(ref, dict)
                or set(ref) != {"prompt", "version"}
                or not isinstance(ref["prompt"], str)
                or isinstance(ref["version"], bool)
                or not isinstance(ref["version"], int)
            ):
                errors.append(
                    {
                        "field": f"{where}.prompt_version",
                        "message": 'must be {"prompt": "<slug>", "version": <number>}',
                    }
                )
            else:
                wanted_versions[i] = (ref["prompt"], ref["version"])
    versions: dict[tuple[str, int], int] = {}
    if wanted_versions:
        pairs = set(wanted_versions.values())
        for pk, slug, number in PromptVersion.objects.filter(
            template__squad_id=queue.squad_id,
            template__slug__in={p for p, _ in pairs},
            number__in={v for _, v in pairs},
        ).values_list("pk", "template__slug", "number"):
            versions[slug, number] = pk
        for i, (slug, number) in wanted_versions.items():
            if (slug, number) not in versions:
                errors.append(
                    {
                        "field": f"items[{i}].prompt_version",
                        "message": f"prompt '{slug}' has no version {number} in squad "
                        f"'{queue.squad.slug}'",
                    }
                )
    if errors:
        errors.sort(key=lambda e: int(e["field"].split("]")[0].removeprefix("items[")))
        _refuse(f"{len(errors)} problem(s) in the items", errors)
    rows = [
        ReviewItem(
            queue=queue,
            prompt_version_id=versions.get(wanted_versions[i]) if i in wanted_versions else None,
            model_name=raw.get("model_name", ""),
            inputs=raw["inputs"],
            output=raw["output"],
            source=ReviewItem.Source.API,
            created_by=actor,
        )
        for i, raw in enumerate(items)
    ]
    return _store_items(
        queue, rows, actor=actor, skipped=0, data={"source": ReviewItem.Source.API}, request=request
    )


# --- claiming ---------------------------------------------------------------------------


def _claim_seconds() -> int:
    return settings.STUDIO_REVIEW_CLAIM_SECONDS


def _release_expired(queue: ReviewQueue, now: datetime) -> int:
    """Hand back up to RELEASE_BATCH expired, unannotated claims: the assignment goes
    and the item's claim count drops. Items another transaction holds are left for a
    later call. Returns how many claims were released."""
    expired = ReviewAssignment.objects.filter(
        queue=queue, completed_at__isnull=True, expires_at__lte=now
    )
    item_ids = set(expired.order_by("expires_at").values_list("item_id", flat=True)[:RELEASE_BATCH])
    if not item_ids:
        return 0
    locked = list(
        ReviewItem.objects.filter(pk__in=item_ids)
        .select_for_update(skip_locked=True, no_key=True)
        .values_list("pk", flat=True)
    )
    if not locked:
        return 0
    mine = expired.filter(item_id__in=locked)
    per_item = Counter(mine.values_list("item_id", flat=True))
    mine.delete()
    by_count: dict[int, list[int]] = defaultdict(list)
    for item_id, count in per_item.items():
        by_count[count].append(item_id)
    for count, ids in by_count.items():
        ReviewItem.objects.filter(pk__in=ids).update(
            claims=F("claims") - count,
            is_full=Case(
                When(claims__gte=queue.overlap + count, then=Value(True)), default=Value(False)
            ),
        )
    return sum(per_item.values())


@transaction.atomic
def review_next_item(*, actor: User, queue: ReviewQueue) -> ReviewItem | None:
    """The item this reviewer should look at next, claimed for them, or None when the
    queue has nothing left for them.

    Their own live claim comes first (a reload returns the same item). Otherwise expired
    claims are released and the first item, by id, that is short of `overlap` reviewers
    and that they have never claimed is locked (skipping items other transactions hold;
    when every open item is held, waiting for the first) and claimed. An annotation
    always leaves a completed assignment behind, so "never claimed" also means "never
    annotated". Cost: index lookups on the partial indexes
    review_assignment_live, review_assignment_expiry and review_item_open; the last
    scan passes over open items the reviewer already holds (their lead over the other
    reviewers), never over the queue."""
    _require_annotator(actor, queue)
    _require_open(queue)
    now = timezone.now()
    own = (
        ReviewAssignment.objects.filter(
            queue=queue, reviewer=actor, completed_at__isnull=True, expires_at__gt=now
        )
        .select_related("item")
        .order_by("claimed_at", "pk")
        .first()
    )
    if own is not None:
        return own.item
    _release_expired(queue, now)
    held = ReviewAssignment.objects.filter(item=OuterRef("pk"), reviewer=actor)
    candidates = queue_items(queue).filter(is_full=False).filter(~Exists(held))
    item = candidates.select_for_update(skip_locked=True, of=("self",), no_key=True).first()
    if item is None:
        # Every open item may be held by another reviewer's claim in flight: wait for the
        # first one rather than say "nothing left". PostgreSQL re-checks is_full on the
        # row it waited for and moves on to the next one if it filled meanwhile.
        item = candidates.select_for_update(of=("self",), no_key=True).first()
    if item is None:
        return None
    ReviewAssignment.objects.create(
        item=item,
        queue=queue,
        reviewer=actor,
        claimed_at=now,
        expires_at=now + timedelta(seconds=_claim_seconds()),
    )
    item.claims += 1
    item.is_full = item.claims >= queue.overlap
    item.save(update_fields=["claims", "is_full"])
    return item


# --- annotating and adjudicating ----------------------------------------------------------


def _edit(original: str, edited: Any) -> tuple[str, int | None]:
    """(stored edited text, Levenshtein distance) — ("", None) when nothing changed."""
    if edited is None:
        return "", None
    edited = _clean_output(edited, field="edited_output")
    if edited == original:
        return "", None
    return edited, Levenshtein.distance(original, edited)


@transaction.atomic
def review_annotate(
    *,
    actor: User,
    item: ReviewItem,
    verdict: str,
    scores: dict[str, Any],
    edited_output: str | None = None,
    comment: str = "",
    seconds_spent: int = 0,
    request: HttpRequest | None = None,
) -> Annotation:
    """Record (or replace) the reviewer's judgement of an item.

    An item the reviewer did not claim through "next item" is claimed now if it still
    has room (Conflict otherwise). Re-annotating replaces verdict, scores, edit and
    comment and adds the seconds spent. The item's counters and the queue's statistics
    move under the queue lock: the item's old contribution is taken back, the new one
    added."""
    queue = _lock_queue(item.queue_id)
    _require_annotator(actor, queue)
    _require_open(queue)
    verdict = _clean_verdict(verdict)
    scores = clean_scores(queue.rubric, scores)
    comment = _clean_text(comment, field="comment", limit=TEXT_MAX)
    if (
        isinstance(seconds_spent, bool)
        or not isinstance(seconds_spent, int)
        or not 0 <= seconds_spent <= MAX_SECONDS
    ):
        raise ValidationFailed(
            f"seconds_spent must be a whole number from 0 to {MAX_SECONDS} "
            f"(got {seconds_spent!r}).",
            field="seconds_spent",
        )
    item = ReviewItem.objects.select_for_update(no_key=True).get(pk=item.pk)
    edited, distance = _edit(item.output, edited_output)
    now = timezone.now()
    assignment = ReviewAssignment.objects.filter(item=item, reviewer=actor).first()
    if assignment is None:
        if item.claims >= queue.overlap:
            raise Conflict(
                f"Item {item.pk} in review queue '{queue.slug}' already has {queue.overlap} "
                f"reviewer(s).",
                field="item",
            )
        ReviewAssignment.objects.create(
            item=item, queue=queue, reviewer=actor, claimed_at=now, expires_at=now, completed_at=now
        )
        item.claims += 1
    elif assignment.completed_at is None:
        assignment.completed_at = now
        assignment.save(update_fields=["completed_at"])
    annotations = list(Annotation.objects.filter(item=item).order_by("pk"))
    stats = _stats(queue)
    _apply_annotations(stats, queue.rubric, annotations, -1)
    _apply_flags(
        stats, disagreement=item.disagreement, adjudicated=item.adjudicated_at is not None, sign=-1
    )
    mine = next((a for a in annotations if a.reviewer_id == actor.pk), None)
    replaced = mine is not None
    if mine is None:
        mine = Annotation(item=item, queue=queue, reviewer=actor, created_at=now)
        annotations.append(mine)
    mine.verdict = verdict
    mine.scores = scores
    mine.edited_output = edited
    mine.edit_distance = distance
    mine.comment = comment
    mine.seconds_spent = (mine.seconds_spent or 0) + seconds_spent
    mine.updated_at = now
    mine.save()
    item.annotation_count = len(annotations)
    item.approvals = sum(a.verdict == APPROVE for a in annotations)
    item.disagreement = item.adjudicated_at is None and _disagrees(queue.rubric, annotations)
    item.is_full = item.claims >= queue.overlap
    item.save(update_fields=["claims", "is_full", "annotation_count", "approvals", "disagreement"])
    _apply_annotations(stats, queue.rubric, annotations, +1)
    _apply_flags(
        stats, disagreement=item.disagreement, adjudicated=item.adjudicated_at is not None, sign=1
    )
    queue.stats = stats
    queue.save(update_fields=["stats"])
    audit_log(
        actor=actor,
        action="review.annotated",
        squad=queue.squad,
        target=mine,
        data={
            "queue": queue.slug,
            "item": item.pk,
            "verdict": verdict,
            "scores": scores,
            "edit_distance": distance,
            "replaced": replaced,
        },
        request=request,
    )
    _drift_check(queue, item)
    return mine


@transaction.atomic
def review_adjudicate(
    *,
    actor: User,
    item: ReviewItem,
    verdict: str,
    output: str | None = None,
    note: str = "",
    request: HttpRequest | None = None,
) -> ReviewItem:
    """Settle an item with at least two annotations: the verdict (and optionally the
    output) that counts from now on. Settled items leave the disagreement list."""
    queue = _lock_queue(item.queue_id)
    require_squad_permission(actor, queue.squad, ADJUDICATE_OUTPUTS)
    item = ReviewItem.objects.select_for_update(no_key=True).get(pk=item.pk)
    if item.annotation_count < 2:
        raise Conflict(
            f"Item {item.pk} in review queue '{queue.slug}' has {item.annotation_count} "
            "annotation(s); adjudication settles items with at least two.",
            field="item",
        )
    verdict = _clean_verdict(verdict)
    final = "" if output is None else _clean_output(output, field="output")
    if final == item.output:
        final = ""
    note = _clean_text(note, field="note", limit=TEXT_MAX)
    stats = _stats(queue)
    _apply_flags(
        stats, disagreement=item.disagreement, adjudicated=item.adjudicated_at is not None, sign=-1
    )
    before = {"verdict": item.adjudicated_verdict, "disagreement": item.disagreement}
    item.adjudicated_verdict = verdict
    item.adjudicated_output = final
    item.adjudicated_by = actor
    item.adjudicated_at = timezone.now()
    item.adjudication_note = note
    item.disagreement = False
    item.save(
        update_fields=[
            "adjudicated_verdict",
            "adjudicated_output",
            "adjudicated_by",
            "adjudicated_at",
            "adjudication_note",
            "disagreement",
        ]
    )
    _apply_flags(stats, disagreement=False, adjudicated=True, sign=1)
    queue.stats = stats
    queue.save(update_fields=["stats"])
    audit_log(
        actor=actor,
        action="review.adjudicated",
        squad=queue.squad,
        target=item,
        data={
            "queue": queue.slug,
            "verdict": verdict,
            "output_changed": bool(final),
            "note": note,
            "before": before,
        },
        request=request,
    )
    _drift_check(queue, item)
    return item


def _drift_check(queue: ReviewQueue, item: ReviewItem) -> None:
    """The version's approval rate moved: apps.feedback checks it for drift (inline, in
    this transaction, so an alert commits with the judgement that raised it)."""
    from apps.feedback.services import drift_check_after_review

    drift_check_after_review(squad=queue.squad, version_id=item.prompt_version_id)


# --- statistics rebuild -------------------------------------------------------------------


@dataclass(frozen=True)
class StatsRebuild:
    stats: dict[str, Any]
    stats_changed: bool
    items_corrected: int


@transaction.atomic
def review_queue_stats_rebuild(*, queue: ReviewQueue) -> StatsRebuild:
    """Recompute the queue's statistics and item counters from the Annotation table
    (repair, and the reference the incremental updates are tested against). Item
    counters that disagree are corrected."""
    queue = _lock_queue(queue.pk)
    rubric = queue.rubric
    stats = empty_stats(rubric)
    by_item: dict[int, list[Annotation]] = defaultdict(list)
    for annotation in (
        Annotation.objects.filter(queue=queue).order_by("item_id", "pk").iterator(chunk_size=CHUNK)
    ):
        by_item[annotation.item_id].append(annotation)
    fixed = []
    for item in (
        ReviewItem.objects.filter(queue=queue)
        .only("pk", "annotation_count", "approvals", "disagreement", "adjudicated_at")
        .order_by("pk")
        .iterator(chunk_size=CHUNK)
    ):
        annotations = by_item.get(item.pk, [])
        counters = (
            len(annotations),
            sum(a.verdict == APPROVE for a in annotations),
            item.adjudicated_at is None and _disagrees(rubric, annotations),
        )
        if counters != (item.annotation_count, item.approvals, item.disagreement):
            item.annotation_count, item.approvals, item.disagreement = counters
            fixed.append(item)
        stats["items"] += 1
        _apply_annotations(stats, rubric, annotations, +1)
        _apply_flags(
            stats,
            disagreement=item.disagreement,
            adjudicated=item.adjudicated_at is not None,
            sign=1,
        )
    ReviewItem.objects.bulk_update(
        fixed, ["annotation_count", "approvals", "disagreement"], batch_size=1000
    )
    changed = stats != queue.stats
    queue.stats = stats
    queue.save(update_fields=["stats"])
    audit_log(
        actor=None,
        action="review.stats_rebuilt",
        squad=queue.squad,
        target=queue,
        data={"stats_changed": changed, "items_corrected": len(fixed)},
    )
    return StatsRebuild(stats=stats, stats_changed=changed, items_corrected=len(fixed))


# --- export -----------------------------------------------------------------------------


def approved_items_filter(queue: ReviewQueue) -> Q:
    """Approved: adjudicated approve; or, unadjudicated, every one of its `overlap`
    reviewers (at least) approved."""
    return Q(adjudicated_verdict=APPROVE) | Q(
        adjudicated_verdict="",
        annotation_count__gte=queue.overlap,
        approvals=F("annotation_count"),
    )


def _export_row(queue: ReviewQueue, item: ReviewItem) -> tuple[dict[str, Any], list[int]]:
    annotations = list(item.annotations.all())  # prefetched, oldest change first
    edits = [a for a in annotations if a.edit_distance is not None]
    if item.adjudicated_output:
        output = item.adjudicated_output
        distance: int | None = Levenshtein.distance(item.output, output)
    elif edits:
        latest = edits[-1]
        output, distance = latest.edited_output, latest.edit_distance
    else:
        output, distance = item.output, None
    version = item.prompt_version
    row: dict[str, Any] = {"inputs": item.inputs, "output": output}
    if version is not None:
        try:
            messages = render_messages(version.messages, version.input_schema, item.inputs)
        except ApplicationError:
            messages = None  # inputs from outside that the version's schema refuses
        if messages is not None:
            row = {"messages": [*messages, {"role": "assistant", "content": output}], **row}
    row["prompt"] = (
        {
            "id": version.pk,
            "template": version.template.slug,
            "number": version.number,
            "hash": version.content_hash,
        }
        if version is not None
        else None
    )
    row["model"] = item.model_name
    row["lineage"] = {
        "queue": queue.slug,
        "queue_id": queue.pk,
        "item": item.pk,
        "generation": item.generation_id,
        "annotators": [a.reviewer.get_username() for a in annotations],
        "adjudicated_by": item.adjudicated_by.get_username() if item.adjudicated_by else None,
        "edited": distance is not None,
        "edit_distance": distance,
    }
    return row, [a.reviewer_id for a in annotations]


@transaction.atomic
def review_export(
    *, actor: User, queue: ReviewQueue, request: HttpRequest | None = None
) -> ReviewExport:
    """Write the queue's approved items as JSONL training rows under STUDIO_DATA_DIR.

    One row per approved item: "messages" (the prompt version rendered with the item's
    inputs, then the output as the assistant turn) when the item's version renders,
    always "inputs" and "output" (adjudicated output, else the latest edit, else the
    original), "prompt" (id, template, number, content hash), "model", and "lineage"
    (queue, item, generation, annotators, adjudicator, edited, edit distance)."""
    queue = ReviewQueue.objects.select_related("squad").get(pk=queue.pk)
    require_squad_permission(actor, queue.squad, EXPORT_REVIEWED_OUTPUTS)
    approved = (
        ReviewItem.objects.filter(queue=queue)
        .filter(approved_items_filter(queue))
        .select_related("prompt_version__template", "adjudicated_by")
        .prefetch_related(
            Prefetch(
                "annotations",
                queryset=Annotation.objects.select_related("reviewer").order_by("updated_at", "pk"),
            )
        )
        .order_by("pk")
    )
    export = ReviewExport.objects.create(
        squad=queue.squad, queue=queue, created_by=actor, path="", sha256="", row_count=0
    )
    path = Path(settings.DATA_DIR) / "review_exports" / str(queue.pk) / f"{export.pk}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    digest = hashlib.sha256()
    item_ids: list[int] = []
    annotators: set[int] = set()
    try:
        with tmp.open("wb") as handle:
            for item in approved.iterator(chunk_size=500):
                row, reviewers = _export_row(queue, item)
                line = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode()
                handle.write(line)
                digest.update(line)
                item_ids.append(item.pk)
                annotators.update(reviewers)
        if not item_ids:
            raise Conflict(
                f"Review queue '{queue.slug}' has no approved items to export yet.", field="queue"
            )
        os.replace(tmp, path)
        export.path = str(path)
        export.sha256 = digest.hexdigest()
        export.row_count = len(item_ids)
        export.lineage = {
            "queue": queue.pk,
            "items": item_ids,
            "annotators": sorted(annotators),
            "rule": "adjudicated approve, or every one of at least `overlap` annotations approves",
            "overlap": queue.overlap,
        }
        export.save(update_fields=["path", "sha256", "row_count", "lineage"])
        audit_log(
            actor=actor,
            action="review.exported",
            squad=queue.squad,
            target=export,
            data={"queue": queue.slug, "rows": len(item_ids), "sha256": export.sha256},
            request=request,
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)  # the rollback takes the row; take the file too
        raise
    return export
