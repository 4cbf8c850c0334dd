"""Writes of apps.feedback: feedback on generations, the drift check, alert rules and
acknowledgements.

The drift check runs inline, in the transaction of the sample that may have moved the
metric (`feedback_submit`, and `reviews.services.queues.review_annotate` /
`review_adjudicate` through `drift_check_after_review`): a few bounded, indexed queries
(the rule, the last alert, the first `baseline_size` and the last `window` samples), so
an alert, its audit event and its webhook deliveries commit with the sample or not at
all. The partial unique constraint `alert_one_open_per_version_metric` keeps one open
alert per version and metric even when two writers race.
"""

import math
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from rapidfuzz.distance import Levenshtein

from apps.audit.services import audit_log
from apps.core.exceptions import Conflict, ValidationFailed
from apps.feedback import drift
from apps.feedback.models import Alert, AlertRule, Feedback
from apps.generation.models import Generation
from apps.prompts.models import PromptVersion
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_ALERTS, SUBMIT_FEEDBACK

User = AbstractBaseUser
COMMENT_MAX = 5000
EXTERNAL_USER_MAX = 200
EDIT_MAX = 200_000
NOTE_MAX = 2000
MAX_WINDOW = 10_000
SIGNALS = ("thumbs", "score", "edited_text")
OPEN_ALERTS_KEY = "feedback:open-alerts:{squad_id}"
OPEN_ALERTS_TTL = 30  # seconds; other processes' local caches see a change within this
RULE_KEY = "feedback:rule:{squad_id}"
RULE_TTL = 60


# --- feedback ------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer beyond a float's range
        return False


def _clean_text(value: Any, *, field: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be text.", field=field)
    if "\x00" in value:  # PostgreSQL text cannot hold it
        raise ValidationFailed(f"{field} contains a NUL character (\\x00).", field=field)
    if len(value) > limit:
        raise ValidationFailed(
            f"{field} is {len(value)} characters long; the limit is {limit}.", field=field
        )
    return value


def _clean_scale(scale: Any) -> tuple[float, float]:
    if scale is None:
        return 0.0, 1.0
    if (
        not isinstance(scale, list | tuple)
        or len(scale) != 2
        or not all(_is_number(v) for v in scale)
    ):
        raise ValidationFailed(
            f"scale must be two numbers [lowest, highest], e.g. [1, 5] (got {scale!r}).",
            field="scale",
        )
    low, high = float(scale[0]), float(scale[1])
    if low >= high:
        raise ValidationFailed(
            f"scale must go from low to high: {scale[0]} is not below {scale[1]}.", field="scale"
        )
    if not math.isfinite(high - low):  # normalising would divide by infinity
        raise ValidationFailed(
            f"scale is too wide: {high:g} − {low:g} is beyond a number's range.", field="scale"
        )
    return low, high


def clean_signal(
    *, generation: Generation, thumbs: Any, score: Any, scale: Any, edited_text: Any
) -> dict[str, Any]:
    """The one signal of a feedback as model fields (kind, thumbs or score or edit, value);
    every refusal names its field."""
    given = [
        name
        for name, value in zip(SIGNALS, (thumbs, score, edited_text), strict=True)
        if value is not None
    ]
    if not given:
        raise ValidationFailed(
            "Feedback needs one of thumbs (1 or -1), score (a number on `scale`, 0..1 by "
            "default) or edited_text (the user's corrected output).",
            field="thumbs",
        )
    if len(given) > 1:
        raise ValidationFailed(
            f"Send one signal per feedback: got {' and '.join(given)}.", field=given[1]
        )
    if scale is not None and score is None:
        raise ValidationFailed("scale is only used with score.", field="scale")
    if thumbs is not None:
        if isinstance(thumbs, bool) or thumbs not in (1, -1):
            raise ValidationFailed(
                f"thumbs must be 1 (up) or -1 (down) (got {thumbs!r}).", field="thumbs"
            )
        return {"kind": Feedback.Kind.THUMBS, "thumbs": int(thumbs), "value": float(thumbs > 0)}
    if score is not None:
        low, high = _clean_scale(scale)
        if not _is_number(score):
            raise ValidationFailed(f"score must be a number (got {score!r}).", field="score")
        if not low <= score <= high:
            raise ValidationFailed(
                f"score {score} is outside the scale {low:g}..{high:g}.", field="score"
            )
        normalised = (score - low) / (high - low)
        return {
            "kind": Feedback.Kind.SCORE,
            "score_raw": float(score),
            "scale_min": low,
            "scale_max": high,
            "score": normalised,
            "value": normalised,
        }
    edited = _clean_text(edited_text, field="edited_text", limit=EDIT_MAX).replace("\r\n", "\n")
    original = generation.output_text
    if not original:
        raise Conflict(
            f"Generation {generation.pk} has no output text to compare an edit with.",
            field="edited_text",
        )
    similarity = Levenshtein.normalized_similarity(original, edited)
    return {
        "kind": Feedback.Kind.EDIT,
        "edited_text": edited,
        "edit_distance": Levenshtein.distance(original, edited),
        "edit_similarity": similarity,
        "value": similarity,
    }


@transaction.atomic
def feedback_submit(
    *,
    actor: User,
    generation: Generation,
    thumbs: Any = None,
    score: Any = None,
    scale: Any = None,
    edited_text: Any = None,
    comment: Any = "",
    external_user_id: Any = "",
    request: HttpRequest | None = None,
) -> Feedback:
    """Store one feedback on a finished generation (exactly one of thumbs, score,
    edited_text), audit it and run the drift check of its version's feedback score."""
    squad = generation.squad
    require_squad_permission(actor, squad, SUBMIT_FEEDBACK)
    if not generation.finished:
        raise Conflict(
            f"Generation {generation.pk} is {generation.status}; feedback is taken once it "
            f"has finished.",
            field="generation",
        )
    if generation.prompt_version_id is None:
        raise Conflict(
            f"Generation {generation.pk} was a gateway call naming a model target, not a "
            f"prompt; feedback and drift are kept per prompt version.",
            field="generation",
        )
    signal = clean_signal(
        generation=generation, thumbs=thumbs, score=score, scale=scale, edited_text=edited_text
    )
    comment = _clean_text(comment, field="comment", limit=COMMENT_MAX)
    external = _clean_text(
        external_user_id, field="external_user_id", limit=EXTERNAL_USER_MAX
    ).strip()
    feedback = Feedback.objects.create(
        squad=squad,
        generation=generation,
        prompt_version_id=generation.prompt_version_id,
        comment=comment,
        external_user_id=external,
        created_by=actor,
        **signal,
    )
    audit_log(
        actor=actor,
        action="feedback.submitted",
        squad=squad,
        target=feedback,
        data={
            "generation": generation.pk,
            "version": generation.prompt_version_id,
            "kind": feedback.kind,
            "value": round(feedback.value, 6),
            "edit_distance": feedback.edit_distance,
            "external_user_id": external,
        },
        request=request,
    )
    drift_check(
        squad=squad, version_id=generation.prompt_version_id, metric=Alert.Metric.FEEDBACK_SCORE
    )
    return feedback


# --- the drift check ------------------------------------------------------------------------


def rule_of(squad_id: int) -> drift.DriftRule:
    """The squad's drift rule (cached: every sample asks; a change is dropped from the
    cache at once and reaches other processes' local caches within RULE_TTL)."""
    key = RULE_KEY.format(squad_id=squad_id)
    found = cache.get(key)
    if found is None:
        row = AlertRule.objects.filter(squad_id=squad_id).first()
        found = (
            drift.DEFAULT_RULE.as_dict()
            if row is None
            else {
                "threshold": row.threshold,
                "window": row.window,
                "baseline_size": row.baseline_size,
                "min_samples": row.min_samples,
                "enabled": row.enabled,
            }
        )
        cache.set(key, found, RULE_TTL)
    return drift.DriftRule(**found)


def _item_approved(adjudicated: str, approvals: int, annotations: int) -> float:
    """An annotated output is approved when adjudicated so, else when a strict majority of
    its annotations approve."""
    if adjudicated:
        return 1.0 if adjudicated == "approve" else 0.0
    return 1.0 if approvals * 2 > annotations else 0.0


def _samples(version_id: int, metric: str, *, after: int = 0, first: int = 0, last: int = 0):
    """(sample id, value) pairs of a version's metric, oldest first: the first `first`, or
    the last `last` with an id above `after`."""
    if metric == Alert.Metric.FEEDBACK_SCORE:
        rows = Feedback.objects.filter(prompt_version_id=version_id, pk__gt=after)
        rows = rows.values_list("pk", "value")
        convert = None
    else:
        from apps.reviews.models import ReviewItem

        rows = ReviewItem.objects.filter(
            prompt_version_id=version_id, annotation_count__gt=0, pk__gt=after
        ).values_list("pk", "adjudicated_verdict", "approvals", "annotation_count")
        convert = _item_approved
    found = list(rows.order_by("pk")[:first]) if first else list(rows.order_by("-pk")[:last])[::-1]
    if convert is None:
        return [(pk, float(v)) for pk, v in found]
    return [(row[0], convert(*row[1:])) for row in found]


def forget_open_alerts(squad_id: int) -> None:
    key = OPEN_ALERTS_KEY.format(squad_id=squad_id)
    cache.delete(key)
    transaction.on_commit(lambda: cache.delete(key))


def drift_check(*, squad: Squad, version_id: int, metric: str) -> Alert | None:
    """Raise an alert when the version's metric drifted (apps.feedback.drift). Call inside
    the transaction of the new sample. Nothing happens while an alert on the same version
    and metric is open; after an alert, only samples newer than the ones that raised it
    count for the next."""
    rule = rule_of(squad.pk)
    if not rule.enabled:
        return None
    baseline = _samples(version_id, metric, first=rule.baseline_size)
    if len(baseline) < rule.baseline_size:
        return None
    previous = (
        Alert.objects.filter(prompt_version_id=version_id, metric=metric)
        .order_by("-pk")
        .values_list("acknowledged_at", "last_sample_id")
        .first()
    )
    if previous is not None and previous[0] is None:
        return None
    after = max(baseline[-1][0], previous[1] if previous else 0)
    window = _samples(version_id, metric, after=after, last=rule.window)
    found = drift.detect([v for _, v in baseline], [v for _, v in window], rule)
    if not found.drifted:
        return None
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                squad=squad,
                prompt_version_id=version_id,
                metric=metric,
                baseline=found.baseline,
                current=found.current,
                drop=found.drop,
                baseline_samples=found.baseline_samples,
                window_samples=found.window_samples,
                rule=rule.as_dict(),
                last_sample_id=window[-1][0],
            )
    except IntegrityError:  # another writer raised it a moment ago
        return None
    version = PromptVersion.objects.select_related("template").get(pk=version_id)
    data = {
        "alert": alert.pk,
        "prompt": version.template.slug,
        "version": version.number,
        "metric": metric,
        "baseline": round(alert.baseline, 4),
        "current": round(alert.current, 4),
        "drop": round(alert.drop, 4),
        "baseline_samples": alert.baseline_samples,
        "window_samples": alert.window_samples,
        "threshold": rule.threshold,
    }
    audit_log(actor=None, action="alert.raised", squad=squad, target=alert, data=data)
    _emit(squad, data)
    forget_open_alerts(squad.pk)
    return alert


def _emit(squad: Squad, data: dict[str, Any]) -> None:
    try:
        from apps.webhooks.events import emit
    except ImportError:  # webhooks not installed
        return
    url = reverse("feedback:alerts", args=[squad.slug])
    emit(squad_id=squad.pk, event="alert.raised", data={**data, "url": url})


def drift_check_after_review(*, squad: Squad, version_id: int | None) -> Alert | None:
    """The approval-rate check after an annotation or adjudication of an output of
    `version_id` (None: an external item without a version, nothing to check)."""
    if version_id is None:
        return None
    return drift_check(squad=squad, version_id=version_id, metric=Alert.Metric.APPROVAL_RATE)


# --- alert rules and acknowledgements -------------------------------------------------------


def _clean_rule(
    *, threshold: Any, window: Any, baseline_size: Any, min_samples: Any, enabled: Any
) -> dict[str, Any]:
    if not _is_number(threshold) or not 0 < threshold < 1:
        raise ValidationFailed(
            f"threshold is a relative drop between 0 and 1, e.g. 0.15 for 15 % "
            f"(got {threshold!r}).",
            field="threshold",
        )
    for name, value in (
        ("window", window),
        ("baseline_size", baseline_size),
        ("min_samples", min_samples),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_WINDOW:
            raise ValidationFailed(
                f"{name} must be a whole number from 2 to {MAX_WINDOW} (got {value!r}).",
                field=name,
            )
    if min_samples > window:
        raise ValidationFailed(
            f"min_samples ({min_samples}) cannot exceed the window ({window}).",
            field="min_samples",
        )
    if min_samples > baseline_size:
        raise ValidationFailed(
            f"min_samples ({min_samples}) cannot exceed the baseline size ({baseline_size}).",
            field="min_samples",
        )
    if not isinstance(enabled, bool):
        raise ValidationFailed(f"enabled must be true or false (got {enabled!r}).", field="enabled")
    return {
        "threshold": float(threshold),
        "window": window,
        "baseline_size": baseline_size,
        "min_samples": min_samples,
        "enabled": enabled,
    }


@transaction.atomic
def alert_rule_update(
    *,
    actor: User,
    squad: Squad,
    threshold: Any,
    window: Any,
    baseline_size: Any,
    min_samples: Any,
    enabled: Any = True,
    request: HttpRequest | None = None,
) -> AlertRule:
    """Set the squad's drift settings (they apply to the next check)."""
    require_squad_permission(actor, squad, MANAGE_ALERTS)
    cleaned = _clean_rule(
        threshold=threshold,
        window=window,
        baseline_size=baseline_size,
        min_samples=min_samples,
        enabled=enabled,
    )
    before = rule_of(squad.pk).as_dict()
    rule, _ = AlertRule.objects.update_or_create(
        squad=squad, defaults={**cleaned, "updated_by": actor, "updated_at": timezone.now()}
    )
    key = RULE_KEY.format(squad_id=squad.pk)
    cache.delete(key)
    transaction.on_commit(lambda: cache.delete(key))
    audit_log(
        actor=actor,
        action="alert.rule_updated",
        squad=squad,
        target=rule,
        data={"before": before, "after": cleaned},
        request=request,
    )
    return rule


@transaction.atomic
def alert_acknowledge(
    *, actor: User, alert: Alert, note: Any = "", request: HttpRequest | None = None
) -> Alert:
    """Mark an open alert as seen, with an optional note; the next alert on the same
    version and metric needs samples newer than the ones that raised this one."""
    squad = alert.squad
    require_squad_permission(actor, squad, MANAGE_ALERTS)
    note = _clean_text(note, field="note", limit=NOTE_MAX).strip()
    alert = Alert.objects.select_for_update().get(pk=alert.pk)
    alert.squad = squad
    if alert.acknowledged_at is not None:
        raise Conflict(f"Alert {alert.pk} was already acknowledged.", field="alert")
    alert.acknowledged_by = actor
    alert.acknowledged_at = timezone.now()
    alert.note = note
    alert.save(update_fields=["acknowledged_by", "acknowledged_at", "note"])
    audit_log(
        actor=actor,
        action="alert.acknowledged",
        squad=alert.squad,
        target=alert,
        data={"metric": alert.metric, "version": alert.prompt_version_id, "note": note},
        request=request,
    )
    forget_open_alerts(alert.squad_id)
    return alert
