"""Reads of apps.feedback: feedback of a generation, alerts, the squad's drift rule, the
open alerts of the banner, and the per-version dashboard series.

Dashboard series are daily buckets (UTC days, the last 7/30/90 days) per prompt version,
each metric from one grouped query over the whole range for all of a template's versions:
- requests, tokens in/out (mean per request), cost per 1,000 requests and latency
  p50/p95 — finished generations with an output (ok, invalid), by their creation day;
  percentiles are PostgreSQL's percentile_cont, or the same interpolation in Python on
  other databases over at most MAX_LATENCY_ROWS of the newest generations;
- approval rate — annotated review items of the version (approved: the adjudicated
  verdict, else a strict majority of its annotations), by the day they entered review;
- feedback score — mean `Feedback.value`, by the day it was given;
- eval pass rate — succeeded eval runs (apps.evals), passed / total, by the day they
  finished.
"""

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.cache import cache
from django.db import connection
from django.db.models import (
    Aggregate,
    Avg,
    Case,
    Count,
    F,
    FloatField,
    IntegerField,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import TruncDate
from django.utils import timezone

from apps.core.exceptions import NotFound, ValidationFailed
from apps.feedback import drift
from apps.feedback.models import Alert, Feedback
from apps.feedback.services import OPEN_ALERTS_KEY, OPEN_ALERTS_TTL, rule_of
from apps.generation.models import Generation
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_SQUAD

User = AbstractBaseUser | AnonymousUser
RANGES = (7, 30, 90)
MAX_LATENCY_ROWS = 200_000
BANNER_ALERTS = 5
MEASURED = (Generation.Status.OK, Generation.Status.INVALID)
METRICS = (
    "requests",
    "latency_p50",
    "latency_p95",
    "tokens_in",
    "tokens_out",
    "cost_per_1k",
    "approval_rate",
    "feedback_score",
    "eval_pass_rate",
)


# --- feedback and alerts ---------------------------------------------------------------------


def feedback_list_for_generation(*, user: User, generation: Generation) -> QuerySet[Feedback]:
    require_squad_permission(user, generation.squad, VIEW_SQUAD)
    return Feedback.objects.filter(generation=generation).select_related("created_by")


def feedback_by_generation(*, user: User, squad: Squad, generation_ids: Iterable[int]) -> dict:
    """{generation id: [Feedback]} for a page showing several generations (one query)."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    found: dict[int, list[Feedback]] = defaultdict(list)
    for row in Feedback.objects.filter(squad=squad, generation_id__in=list(generation_ids)):
        found[row.generation_id].append(row)
    return dict(found)


def alert_list_for_user(*, user: User, squad: Squad, state: str = "open") -> QuerySet[Alert]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    alerts = Alert.objects.filter(squad=squad).select_related(
        "prompt_version__template", "acknowledged_by"
    )
    if state == "open":
        return alerts.filter(acknowledged_at__isnull=True)
    if state == "acknowledged":
        return alerts.filter(acknowledged_at__isnull=False)
    if state != "all":
        raise ValidationFailed(
            f"state is one of open, acknowledged, all (got {state!r}).", field="state"
        )
    return alerts


def alert_get_for_user(*, user: User, squad: Squad, alert_id: int) -> Alert:
    alert = alert_list_for_user(user=user, squad=squad, state="all").filter(pk=alert_id).first()
    if alert is None:
        raise NotFound(f"Alert {alert_id} not found.")
    alert.squad = squad
    return alert


def alert_rule_for_user(*, user: User, squad: Squad) -> drift.DriftRule:
    require_squad_permission(user, squad, VIEW_SQUAD)
    return rule_of(squad.pk)


def _open_alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.pk,
        "squad": alert.squad.slug,
        "squad_name": alert.squad.name,
        "prompt": alert.prompt_version.template.slug,
        "version": alert.prompt_version.number,
        "metric": alert.get_metric_display(),
        "drop": alert.drop,
        "drop_pct": round(alert.drop * 100),
    }


def open_alerts_for_squads(squads: Sequence[Squad]) -> list[dict[str, Any]]:
    """The banner: open alerts of these squads (the caller's visible squads), newest first.
    Read from the cache (no query when warm); squads missing from it cost one query."""
    if not squads:
        return []
    keys = {OPEN_ALERTS_KEY.format(squad_id=s.pk): s.pk for s in squads}
    cached = cache.get_many(list(keys))
    missing = [pk for key, pk in keys.items() if key not in cached]
    if missing:
        fresh: dict[int, list[dict[str, Any]]] = {pk: [] for pk in missing}
        rows = (
            Alert.objects.filter(squad_id__in=missing, acknowledged_at__isnull=True)
            .select_related("squad", "prompt_version__template")
            .order_by("-raised_at", "-pk")
        )
        for alert in rows:
            fresh[alert.squad_id].append(_open_alert_row(alert))
        cache.set_many(
            {OPEN_ALERTS_KEY.format(squad_id=pk): v for pk, v in fresh.items()}, OPEN_ALERTS_TTL
        )
        cached.update({OPEN_ALERTS_KEY.format(squad_id=pk): v for pk, v in fresh.items()})
    alerts = [row for key in keys for row in cached.get(key, [])]
    return sorted(alerts, key=lambda a: -a["id"])


# --- dashboard ------------------------------------------------------------------------------


class Percentile(Aggregate):
    """PostgreSQL's percentile_cont (continuous: linear interpolation between rows)."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


def percentile_cont(ordered: Sequence[float], fraction: float) -> float | None:
    """percentile_cont over sorted values: linear interpolation at fraction × (n − 1)."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class VersionStats:
    """One version's daily series (`series[metric][i]` for `days[i]`, None: no data) and
    its summary over the whole range."""

    version: PromptVersion
    series: dict[str, list[float | None]]
    summary: dict[str, float | None]
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Dashboard:
    template: PromptTemplate
    days: list[date]
    range_days: int
    versions: list[VersionStats]
    sampled: bool = False
    has_evals: bool = False

    def stats_of(self, number: int) -> VersionStats | None:
        return next((s for s in self.versions if s.version.number == number), None)


def _clean_range(days: Any) -> int:
    try:
        value = int(days)
    except (TypeError, ValueError):
        value = None
    if value not in RANGES:
        raise ValidationFailed(
            f"range is one of {', '.join(map(str, RANGES))} days (got {days!r}).", field="range"
        )
    return value


def _ratio(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
    return numerator * scale / denominator if denominator else None


def _latency(
    version_ids: list[int], since: datetime, index: dict[date, int]
) -> tuple[
    dict[tuple[int, int], dict[str, float | None]], dict[int, dict[str, float | None]], bool
]:
    """p50/p95 per (version, day index) and per version over the range; and whether the
    Python path had to leave out older rows."""
    rows = Generation.objects.filter(
        prompt_version_id__in=version_ids, created_at__gte=since, status__in=MEASURED
    )
    daily: dict[tuple[int, int], dict[str, float | None]] = {}
    overall: dict[int, dict[str, float | None]] = {}
    if connection.vendor == "postgresql":
        grouped = (
            rows.annotate(day=TruncDate("created_at"))
            .values("prompt_version_id", "day")
            .annotate(p50=Percentile("latency_ms", 0.5), p95=Percentile("latency_ms", 0.95))
            .order_by()
        )
        for row in grouped:
            if row["day"] not in index:  # stamped after today (a clock ahead): no bucket
                continue
            daily[(row["prompt_version_id"], index[row["day"]])] = {
                "latency_p50": row["p50"],
                "latency_p95": row["p95"],
            }
        for row in (
            rows.values("prompt_version_id")
            .annotate(p50=Percentile("latency_ms", 0.5), p95=Percentile("latency_ms", 0.95))
            .order_by()
        ):
            overall[row["prompt_version_id"]] = {
                "latency_p50": row["p50"],
                "latency_p95": row["p95"],
            }
        return daily, overall, False
    values = list(
        rows.order_by("-created_at").values_list("prompt_version_id", "created_at", "latency_ms")[
            : MAX_LATENCY_ROWS + 1
        ]
    )
    sampled = len(values) > MAX_LATENCY_ROWS
    by_day: dict[tuple[int, int], list[float]] = defaultdict(list)
    by_version: dict[int, list[float]] = defaultdict(list)
    tz = timezone.get_current_timezone()
    for version_id, created_at, latency in values[:MAX_LATENCY_ROWS]:
        day = timezone.localtime(created_at, tz).date()
        if day in index:
            by_day[(version_id, index[day])].append(latency)
        by_version[version_id].append(latency)
    for key, found in by_day.items():
        found.sort()
        daily[key] = {
            "latency_p50": percentile_cont(found, 0.5),
            "latency_p95": percentile_cont(found, 0.95),
        }
    for version_id, found in by_version.items():
        found.sort()
        overall[version_id] = {
            "latency_p50": percentile_cont(found, 0.5),
            "latency_p95": percentile_cont(found, 0.95),
        }
    return daily, overall, sampled


def _eval_rows(version_ids: list[int], since: datetime) -> tuple[list[dict[str, Any]], bool]:
    try:
        from apps.evals.models import EvalRun
    except ImportError:  # apps.evals not installed
        return [], False
    rows = (
        EvalRun.objects.filter(
            version_id__in=version_ids,
            status=EvalRun.Status.SUCCEEDED,
            finished_at__gte=since,
        )
        .annotate(day=TruncDate("finished_at"))
        .values("version_id", "day")
        .annotate(passed_sum=Sum("passed"), total_sum=Sum("total"), runs=Count("id"))
        .order_by()
    )
    return list(rows), True


def template_dashboard(
    *, user: User, template: PromptTemplate, days: Any = 30, now: datetime | None = None
) -> Dashboard:
    """Daily series and range summaries of every version of the template (a fixed number
    of queries whatever the number of versions, days or generations)."""
    require_squad_permission(user, template.squad, VIEW_SQUAD)
    range_days = _clean_range(days)
    today = timezone.localdate(now or timezone.now())
    day_list = [today - timedelta(days=range_days - 1 - i) for i in range(range_days)]
    index = {d: i for i, d in enumerate(day_list)}
    since = timezone.make_aware(datetime.combine(day_list[0], time.min))
    versions = list(template.versions.select_related("author").order_by("-number"))
    ids = [v.pk for v in versions]
    n = len(day_list)

    def empty() -> dict[str, list[float | None]]:
        return {m: [None] * n for m in METRICS}

    series: dict[int, dict[str, list[float | None]]] = {pk: empty() for pk in ids}
    totals: dict[int, dict[str, float]] = {pk: defaultdict(float) for pk in ids}

    generations = (
        Generation.objects.filter(
            prompt_version_id__in=ids, created_at__gte=since, status__in=MEASURED
        )
        .annotate(day=TruncDate("created_at"))
        .values("prompt_version_id", "day")
        .annotate(
            n=Count("id"),
            tin=Sum("input_tokens"),
            tout=Sum("output_tokens"),
            cost=Sum("cost"),
        )
        .order_by()
    )
    for row in generations:
        pk, i = row["prompt_version_id"], index.get(row["day"])
        if i is None:
            continue
        count, cost = row["n"], float(row["cost"] or 0)
        s = series[pk]
        s["requests"][i] = count
        s["tokens_in"][i] = row["tin"] / count
        s["tokens_out"][i] = row["tout"] / count
        s["cost_per_1k"][i] = cost * 1000 / count
        t = totals[pk]
        t["requests"] += count
        t["tin"] += row["tin"]
        t["tout"] += row["tout"]
        t["cost"] += cost

    daily_latency, overall_latency, sampled = _latency(ids, since, index)
    for (pk, i), values in daily_latency.items():
        for metric, value in values.items():
            series[pk][metric][i] = value

    twice = F("approvals") * 2
    approvals = (
        _review_items()
        .filter(prompt_version_id__in=ids, annotation_count__gt=0, created_at__gte=since)
        .alias(twice=twice)
        .annotate(day=TruncDate("created_at"))
        .values("prompt_version_id", "day")
        .annotate(
            n=Count("id"),
            approved=Sum(
                Case(
                    When(adjudicated_verdict="approve", then=Value(1)),
                    When(adjudicated_verdict="", twice__gt=F("annotation_count"), then=Value(1)),
                    default=Value(0),
                    output_field=IntegerField(),
                )
            ),
        )
        .order_by()
    )
    for row in approvals:
        pk, i = row["prompt_version_id"], index.get(row["day"])
        if i is None:
            continue
        series[pk]["approval_rate"][i] = row["approved"] / row["n"]
        totals[pk]["approval_n"] += row["n"]
        totals[pk]["approved"] += row["approved"]

    feedback = (
        Feedback.objects.filter(prompt_version_id__in=ids, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("prompt_version_id", "day")
        .annotate(n=Count("id"), mean=Avg("value"))
        .order_by()
    )
    for row in feedback:
        pk, i = row["prompt_version_id"], index.get(row["day"])
        if i is None:
            continue
        series[pk]["feedback_score"][i] = row["mean"]
        totals[pk]["feedback_n"] += row["n"]
        totals[pk]["feedback_sum"] += row["mean"] * row["n"]

    eval_rows, has_evals = _eval_rows(ids, since)
    for row in eval_rows:
        pk, i = row["version_id"], index.get(row["day"])
        if i is None or not row["total_sum"]:
            continue
        series[pk]["eval_pass_rate"][i] = row["passed_sum"] / row["total_sum"]
        totals[pk]["eval_passed"] += row["passed_sum"]
        totals[pk]["eval_total"] += row["total_sum"]
        totals[pk]["eval_runs"] += row["runs"]

    stats = []
    for version in versions:
        t = totals[version.pk]
        latency = overall_latency.get(version.pk, {})
        summary = {
            "requests": t["requests"],
            "latency_p50": latency.get("latency_p50"),
            "latency_p95": latency.get("latency_p95"),
            "tokens_in": _ratio(t["tin"], t["requests"]),
            "tokens_out": _ratio(t["tout"], t["requests"]),
            "cost_per_1k": _ratio(t["cost"], t["requests"], 1000),
            "approval_rate": _ratio(t["approved"], t["approval_n"]),
            "feedback_score": _ratio(t["feedback_sum"], t["feedback_n"]),
            "eval_pass_rate": _ratio(t["eval_passed"], t["eval_total"]),
        }
        counts = {
            "requests": int(t["requests"]),
            "approval_rate": int(t["approval_n"]),
            "feedback_score": int(t["feedback_n"]),
            "eval_pass_rate": int(t["eval_runs"]),
        }
        stats.append(VersionStats(version, series[version.pk], summary, counts))
    return Dashboard(template, day_list, range_days, stats, sampled=sampled, has_evals=has_evals)


def _review_items() -> QuerySet:
    from apps.reviews.models import ReviewItem

    return ReviewItem.objects.all()
