"""HTML views of apps.feedback: the feedback panel of a generation (loaded by htmx on the
generation page and the review item page), the per-version dashboard of a prompt, and the
squad's drift alerts with their rule.

Each view parses the request, calls one service or selector (the ones the API calls) and
renders a page or a partial; errors a person can fix render inline."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.exceptions import ApplicationError, PermissionDenied
from apps.core.http import parse_id
from apps.core.views import number_or_text, partial_template
from apps.feedback import charts, selectors, services
from apps.feedback.selectors import RANGES, Dashboard, VersionStats
from apps.generation.models import Generation
from apps.generation.selectors import generation_get_for_user
from apps.prompts.selectors import prompt_template_get_for_user
from apps.squads.access import has_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_ALERTS, SUBMIT_FEEDBACK
from apps.squads.selectors import squad_get_for_user

# metric, heading, how values read, chart's fixed top (None: from the data)
CHARTS: list[tuple[str, str, str, float | None]] = [
    ("latency_p50", "Latency p50 (ms)", "ms", None),
    ("latency_p95", "Latency p95 (ms)", "ms", None),
    ("tokens_in", "Input tokens per request", "tokens", None),
    ("tokens_out", "Output tokens per request", "tokens", None),
    ("cost_per_1k", "Cost per 1,000 requests", "cost", None),
    ("approval_rate", "Approval rate", "share", 1.0),
    ("feedback_score", "Feedback score (0–1)", "share", 1.0),
    ("eval_pass_rate", "Eval pass rate", "share", 1.0),
    ("requests", "Requests", "count", None),
]


def fmt(kind: str, value: float | None) -> str:
    if value is None:
        return "—"
    if kind == "share":
        return f"{value:.1%}"
    if kind == "cost":
        return f"{value:.4f}"
    if kind == "ms":
        return f"{value:,.0f}"
    if kind == "count":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


# --- feedback panel --------------------------------------------------------------------------


def _form_signal(data: Any) -> dict[str, Any]:
    """The signal a form chose, as the service takes it (it names what is wrong)."""
    kind = data.get("kind", "")
    if kind == "thumbs":
        raw = data.get("thumbs", "")
        return {"thumbs": {"up": 1, "down": -1}.get(raw, raw or None)}
    if kind == "score":
        low, high = (
            number_or_text(data.get("scale_min", "")),
            number_or_text(data.get("scale_max", "")),
        )
        scale = None if low is None and high is None else [low, high]
        return {"score": number_or_text(data.get("score", "")), "scale": scale}
    if kind == "edit":
        return {"edited_text": data.get("edited_text", "").replace("\r\n", "\n")}
    return {}


def _panel_context(
    request: HttpRequest, squad: Squad, generation: Generation, **extra: Any
) -> dict[str, Any]:
    compact = request.GET.get("compact") == "1" or request.POST.get("compact") == "1"
    return {
        "squad": squad,
        "generation": generation,
        "feedback": list(
            selectors.feedback_list_for_generation(user=request.user, generation=generation)
        ),
        "compact": compact,
        "can_submit": not compact
        and generation.finished
        and has_squad_permission(request.user, squad, SUBMIT_FEEDBACK),
        "form": {"kind": "thumbs", "scale_min": "1", "scale_max": "5"},
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
def generation_feedback(request: HttpRequest, squad: str, generation_id: int) -> HttpResponse:
    """The feedback given on a generation, and (for members who may) a form to add one."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    generation = generation_get_for_user(
        user=request.user, squad=squad_obj, generation_id=generation_id
    )
    page = partial_template(request, "feedback/generation.html", "panel")
    if request.method == "GET":
        return render(request, page, _panel_context(request, squad_obj, generation))
    try:
        saved = services.feedback_submit(
            actor=request.user,
            generation=generation,
            comment=request.POST.get("comment", "").replace("\r\n", "\n"),
            request=request,
            **_form_signal(request.POST),
        )
    except ApplicationError as exc:
        if isinstance(exc, PermissionDenied) or not request.htmx:
            raise
        context = _panel_context(
            request, squad_obj, generation, error=exc, form={**request.POST.dict()}
        )
        return render(request, page, context, status=exc.status_code)
    if not request.htmx:
        return redirect("generation:generation", squad=squad, generation_id=generation.pk)
    return render(request, page, _panel_context(request, squad_obj, generation, saved=saved))


# --- dashboard ----------------------------------------------------------------------------------


def _pick(board: Dashboard, raw: str | None, default: VersionStats | None) -> VersionStats | None:
    number = parse_id(raw)
    if number is not None:
        found = board.stats_of(number)
        if found is not None:
            return found
    return default


def _comparison(a: VersionStats, b: VersionStats | None) -> list[dict[str, Any]]:
    rows = []
    for metric, heading, kind, _ in CHARTS:
        left = a.summary.get(metric)
        right = b.summary.get(metric) if b else None
        delta = right - left if left is not None and right is not None else None
        relative = delta / left if delta is not None and left else None
        rows.append(
            {
                "metric": heading,
                "a": fmt(kind, left),
                "b": fmt(kind, right),
                "delta": ("+" if delta and delta > 0 else "") + fmt(kind, delta)
                if delta is not None
                else "—",
                "relative": f"{relative:+.1%}" if relative is not None else "",
                "a_n": a.counts.get(metric),
                "b_n": b.counts.get(metric) if b else None,
            }
        )
    return rows


def _charts(board: Dashboard, shown: list[VersionStats]) -> list[dict[str, Any]]:
    made = []
    for metric, heading, kind, top in CHARTS:
        if metric == "eval_pass_rate" and not board.has_evals:
            continue
        lines = [charts.Line(f"v{s.version.number}", s.series[metric]) for s in shown]
        names = " and ".join(line.name for line in lines)
        made.append(
            {
                "id": f"chart-{metric}",
                "heading": heading,
                "svg": charts.line_chart(
                    chart_id=f"chart-{metric}",
                    title=f"{heading}, {names}, last {board.range_days} days",
                    desc=f"Daily {heading.lower()} of {names} of prompt "
                    f"{board.template.slug}; the table below lists the same numbers.",
                    days=board.days,
                    lines=lines,
                    fmt=lambda v, kind=kind: fmt(kind, v),
                    y_max=top,
                ),
                "rows": [
                    {"day": day, "values": [fmt(kind, s.series[metric][i]) for s in shown]}
                    for i, day in enumerate(board.days)
                    if any(s.series[metric][i] is not None for s in shown)
                ],
            }
        )
    return made


@login_required
@require_GET
def dashboard(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    """Charts of one version (`a`, default the latest) over 7/30/90 days, another (`b`,
    default the one before) on the same charts, and every version's summary."""
    template = prompt_template_get_for_user(user=request.user, squad_slug=squad, slug=slug)
    raw_range = request.GET.get("range", "30")
    board = selectors.template_dashboard(user=request.user, template=template, days=raw_range)
    versions = board.versions
    a = _pick(board, request.GET.get("a"), versions[0] if versions else None)
    others = [s for s in versions if a is None or s.version.pk != a.version.pk]
    b = None if request.GET.get("b") == "none" else _pick(board, request.GET.get("b"), None)
    if b is None and request.GET.get("b") != "none":
        b = next((s for s in others if a and s.version.number < a.version.number), None)
    if b is not None and a is not None and b.version.pk == a.version.pk:
        b = None
    shown = [s for s in (a, b) if s is not None]
    context = {
        "squad": template.squad,
        "template": template,
        "board": board,
        "ranges": RANGES,
        "a": a,
        "b": b,
        "charts": _charts(board, shown),
        "comparison": _comparison(a, b) if a else [],
        "summary_rows": [
            {
                "stats": s,
                "cells": [fmt(kind, s.summary.get(metric)) for metric, _, kind, _ in CHARTS],
            }
            for s in versions
        ],
        "summary_heads": [heading for _, heading, _, _ in CHARTS],
    }
    return render(request, "feedback/dashboard.html", context)


# --- alerts ---------------------------------------------------------------------------------


def _alerts_context(request: HttpRequest, squad: Squad, **extra: Any) -> dict[str, Any]:
    state = request.GET.get("state", "open")
    if state not in ("open", "acknowledged", "all"):
        state = "open"
    rule = selectors.alert_rule_for_user(user=request.user, squad=squad)
    return {
        "squad": squad,
        "state": state,
        "states": [("open", "Open"), ("acknowledged", "Acknowledged"), ("all", "All")],
        "alerts": list(
            selectors.alert_list_for_user(user=request.user, squad=squad, state=state)[:200]
        ),
        "rule": rule,
        "rule_form": extra.pop("rule_form", None) or {k: str(v) for k, v in rule.as_dict().items()},
        "can_manage": has_squad_permission(request.user, squad, MANAGE_ALERTS),
        **extra,
    }


@login_required
@require_GET
def alerts(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    return render(request, "feedback/alerts.html", _alerts_context(request, squad_obj))


@login_required
@require_POST
def alert_acknowledge(request: HttpRequest, squad: str, alert_id: int) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    alert = selectors.alert_get_for_user(user=request.user, squad=squad_obj, alert_id=alert_id)
    try:
        services.alert_acknowledge(
            actor=request.user, alert=alert, note=request.POST.get("note", ""), request=request
        )
    except ApplicationError as exc:
        if isinstance(exc, PermissionDenied):
            raise
        context = _alerts_context(request, squad_obj, ack_error=exc, ack_alert=alert.pk)
        return render(request, "feedback/alerts.html", context, status=exc.status_code)
    return redirect("feedback:alerts", squad=squad)


def _int_or_text(raw: str) -> Any:
    raw = raw.strip()
    number = parse_id(raw)
    return number if number is not None else raw


@login_required
@require_POST
def alert_rule(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    form = {
        "threshold": request.POST.get("threshold", "").strip(),
        "window": request.POST.get("window", "").strip(),
        "baseline_size": request.POST.get("baseline_size", "").strip(),
        "min_samples": request.POST.get("min_samples", "").strip(),
        "enabled": "True" if request.POST.get("enabled") == "on" else "False",
    }
    try:
        threshold: Any = float(form["threshold"])
    except ValueError:
        threshold = form["threshold"]
    try:
        services.alert_rule_update(
            actor=request.user,
            squad=squad_obj,
            threshold=threshold,
            window=_int_or_text(form["window"]),
            baseline_size=_int_or_text(form["baseline_size"]),
            min_samples=_int_or_text(form["min_samples"]),
            enabled=form["enabled"] == "True",
            request=request,
        )
    except ApplicationError as exc:
        if isinstance(exc, PermissionDenied):
            raise
        context = _alerts_context(request, squad_obj, rule_error=exc, rule_form=form)
        return render(request, "feedback/alerts.html", context, status=exc.status_code)
    return redirect("feedback:alerts", squad=squad)
