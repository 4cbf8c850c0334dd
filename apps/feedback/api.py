"""REST operations of apps.feedback: feedback on generations, drift alerts and the drift
rule, the per-version dashboard series."""

from typing import Any

from django.http import HttpRequest
from ninja import Router, Status

from apps.feedback import selectors, services
from apps.feedback.models import Alert, Feedback
from apps.feedback.schemas import (
    AcknowledgeIn,
    AlertOut,
    AlertRuleIn,
    AlertRuleOut,
    FeedbackDashboardOut,
    FeedbackIn,
    FeedbackOut,
)
from apps.generation.selectors import generation_get_for_user
from apps.prompts.selectors import prompt_template_get_for_user
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["feedback and alerts"])


def feedback_out(f: Feedback, prompt: str, version: int) -> dict[str, Any]:
    return {
        "id": f.pk,
        "generation": f.generation_id,
        "prompt": prompt,
        "version": version,
        "kind": f.kind,
        "thumbs": f.thumbs,
        "score": f.score,
        "score_raw": f.score_raw,
        "scale": [f.scale_min, f.scale_max] if f.scale_min is not None else None,
        "edit_distance": f.edit_distance,
        "edit_similarity": f.edit_similarity,
        "value": f.value,
        "comment": f.comment,
        "external_user_id": f.external_user_id,
        "created_by": f.created_by.get_username() if f.created_by else None,
        "created_at": f.created_at,
    }


def alert_out(a: Alert) -> dict[str, Any]:
    return {
        "id": a.pk,
        "prompt": a.prompt_version.template.slug,
        "version": a.prompt_version.number,
        "metric": a.metric,
        "baseline": a.baseline,
        "current": a.current,
        "drop": a.drop,
        "baseline_samples": a.baseline_samples,
        "window_samples": a.window_samples,
        "rule": a.rule,
        "raised_at": a.raised_at,
        "acknowledged_by": a.acknowledged_by.get_username() if a.acknowledged_by else None,
        "acknowledged_at": a.acknowledged_at,
        "note": a.note,
    }


G = "/squads/{squad}/generations/{generation_id}/feedback"


@router.post(G, response={201: FeedbackOut})
def feedback_create(
    request: HttpRequest, squad: str, generation_id: int, payload: FeedbackIn
) -> Status:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    generation = generation_get_for_user(
        user=request.auth, squad=squad_obj, generation_id=generation_id
    )
    feedback = services.feedback_submit(
        actor=request.auth, generation=generation, request=request, **payload.dict()
    )
    version = generation.prompt_version
    return Status(201, feedback_out(feedback, version.template.slug, version.number))


@router.get(G, response=list[FeedbackOut])
def feedback_list(request: HttpRequest, squad: str, generation_id: int) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    generation = generation_get_for_user(
        user=request.auth, squad=squad_obj, generation_id=generation_id
    )
    version = generation.prompt_version
    return [
        feedback_out(f, version.template.slug, version.number)
        for f in selectors.feedback_list_for_generation(user=request.auth, generation=generation)
    ]


@router.get("/squads/{squad}/alerts", response=list[AlertOut])
def alert_list(request: HttpRequest, squad: str, state: str = "open") -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return [
        alert_out(a)
        for a in selectors.alert_list_for_user(user=request.auth, squad=squad_obj, state=state)
    ]


@router.post("/squads/{squad}/alerts/{alert_id}/acknowledge", response=AlertOut)
def alert_acknowledge(
    request: HttpRequest, squad: str, alert_id: int, payload: AcknowledgeIn
) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    alert = selectors.alert_get_for_user(user=request.auth, squad=squad_obj, alert_id=alert_id)
    done = services.alert_acknowledge(
        actor=request.auth, alert=alert, note=payload.note, request=request
    )
    done.prompt_version = alert.prompt_version
    return alert_out(done)


@router.get("/squads/{squad}/alert-rule", response=AlertRuleOut)
def alert_rule_get(request: HttpRequest, squad: str) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return selectors.alert_rule_for_user(user=request.auth, squad=squad_obj).as_dict()


@router.put("/squads/{squad}/alert-rule", response=AlertRuleOut)
def alert_rule_put(request: HttpRequest, squad: str, payload: AlertRuleIn) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    services.alert_rule_update(
        actor=request.auth, squad=squad_obj, request=request, **payload.dict()
    )
    return selectors.alert_rule_for_user(user=request.auth, squad=squad_obj).as_dict()


@router.get("/squads/{squad}/prompts/{slug}/dashboard", response=FeedbackDashboardOut)
def dashboard(request: HttpRequest, squad: str, slug: str, range: int = 30) -> dict:
    template = prompt_template_get_for_user(user=request.auth, squad_slug=squad, slug=slug)
    board = selectors.template_dashboard(user=request.auth, template=template, days=range)
    return {
        "prompt": template.slug,
        "range_days": board.range_days,
        "days": board.days,
        "latency_sampled": board.sampled,
        "versions": [
            {
                "version": s.version.number,
                "summary": s.summary,
                "counts": s.counts,
                "series": s.series,
            }
            for s in board.versions
        ],
    }
