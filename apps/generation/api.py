import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import reverse
from ninja import File, Form, Query, Router, Schema, Status
from ninja.files import UploadedFile

from apps.core.exceptions import NotFound
from apps.core.fairshare import QueuePositions, queue_out
from apps.core.waits import wait_slot
from apps.generation import exports, selectors, services
from apps.generation.models import BatchJob, Generation, ModelTarget
from apps.generation.schemas import (
    BatchJobOut,
    GenerateIn,
    GenerationOut,
    TargetCreateIn,
    TargetOut,
    TargetUpdateIn,
)
from apps.prompts import selectors as prompt_selectors
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["generation"])


def resolve_version(
    user: Any, template: PromptTemplate, *, label: str | None, version: int | None
) -> PromptVersion:
    """By number, by label, or the latest version."""
    if version is not None:
        return prompt_selectors.prompt_version_get(user=user, template=template, number=version)
    if label is not None:
        found = template.labels.select_related("version").filter(name=label).first()
        if found is None:
            raise NotFound(f"Prompt '{template.slug}' has no label '{label}'.", field="label")
        return found.version
    if template.latest_version is None:
        raise NotFound(f"Prompt '{template.slug}' has no version yet.", field="version")
    return template.latest_version


def target_out(t: ModelTarget) -> dict[str, Any]:
    return {
        "name": t.name,
        "kind": t.kind,
        "scope": "global" if t.squad_id is None else "squad",
        "description": t.description,
        "base_model": t.base_model,
        "base_url": t.base_url,
        "remote_model": t.remote_model,
        "token_env": t.token_env,
        "adapter_id": t.adapter_id,
        "adapter": t.lora_adapter_id,
        "default_params": t.default_params,
        "context_length": t.context_length,
        "price_input_per_1k": t.price_input_per_1k,
        "price_output_per_1k": t.price_output_per_1k,
        "enabled": t.enabled,
    }


def generation_out(g: Generation) -> dict[str, Any]:
    return {
        "id": g.pk,
        "status": g.status,
        "prompt": g.prompt_version.template.slug if g.prompt_version else None,
        "version": g.prompt_version.number if g.prompt_version else None,
        "target": g.target.name,
        "target_used": g.target_used,
        "variables": g.variables,
        "output_text": g.output_text,
        "output_json": g.output_json,
        "errors": g.errors,
        "findings": g.findings,
        "attempts": g.attempts,
        "input_tokens": g.input_tokens,
        "output_tokens": g.output_tokens,
        "latency_ms": g.latency_ms,
        "cost": g.cost,
        "source": g.source,
        "created_at": g.created_at,
        "finished_at": g.finished_at,
        "poll_url": reverse(
            "api:generation_detail", kwargs={"squad": g.squad.slug, "generation_id": g.pk}
        ),
    }


def batch_out(job: BatchJob, positions: QueuePositions | None = None) -> dict[str, Any]:
    return {
        "id": job.pk,
        "status": job.status,
        "prompt": job.prompt_version.template.slug,
        "version": job.prompt_version.number,
        "target": job.target.name,
        "rows_total": job.rows_total,
        "rows_done": job.rows_done,
        "batch_size": job.batch_size,
        "output_tokens": job.output_tokens,
        "tokens_per_second": round(job.tokens_per_second, 2),
        "eta_seconds": job.eta_seconds,
        "cancel_requested": job.cancel_requested,
        "error": job.error,
        "queue": queue_out(job, positions),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


@router.get("/squads/{squad}/targets", response=list[TargetOut])
def target_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return [
        target_out(t)
        for t in selectors.model_target_list_for_user(user=request.auth, squad=squad_obj)
    ]


@router.post("/squads/{squad}/targets", response={201: TargetOut})
def target_create(request: HttpRequest, squad: str, payload: TargetCreateIn) -> Status:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    data = payload.dict()
    is_global = data.pop("global_target")
    adapter = _adapter(request, squad_obj, data.pop("adapter"))
    target = services.model_target_create(
        actor=request.auth,
        squad=None if is_global else squad_obj,
        adapter=adapter,
        request=request,
        **data,
    )
    return Status(201, target_out(target))


def _adapter(request: HttpRequest, squad: Any, adapter_id: int | None) -> Any:
    """The squad's adapter a target names (404 on `adapter`), or None."""
    from apps.finetune import selectors as finetune_selectors

    if adapter_id is None:
        return None
    try:
        return finetune_selectors.adapter_get_for_user(
            user=request.auth, squad=squad, adapter_id=adapter_id
        )
    except NotFound as exc:
        raise NotFound(exc.message, field="adapter") from exc


@router.put("/squads/{squad}/targets/{name}", response=TargetOut)
def target_update(request: HttpRequest, squad: str, name: str, payload: TargetUpdateIn) -> dict:
    """Change one of the squad's own targets (the same service as the target form): a
    base model its adapter was not trained on is refused (422 on `adapter`)."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    target = selectors.model_target_get_for_user(user=request.auth, squad=squad_obj, name=name)
    data = payload.dict()
    enabled = data.pop("enabled")
    adapter = _adapter(request, squad_obj, data.pop("adapter"))
    target = services.model_target_update(
        actor=request.auth,
        target=target,
        adapter=adapter,
        enabled=enabled,
        request=request,
        **data,
    )
    return target_out(target)


@router.post(
    "/squads/{squad}/prompts/{slug}/generate",
    response={200: GenerationOut, 202: GenerationOut},
    openapi_extra={"x-studio-errors": ["429"]},
)
def generate(request: HttpRequest, squad: str, slug: str, payload: GenerateIn) -> Status:
    """Queue a generation on the gpu queue. Returns 202 with a poll URL, or — with
    `wait: true` — the finished result if it arrives within `timeout` seconds. Waiting
    holds a web worker, so only STUDIO_GENERATE_MAX_WAITING calls may wait at once;
    past that, 429 with Retry-After and nothing is queued (apps/core/waits.py)."""
    if not payload.wait:
        return _generate(request, squad, slug, payload)
    with wait_slot("generate", limit=settings.STUDIO_GENERATE_MAX_WAITING, seconds=payload.timeout):
        return _generate(request, squad, slug, payload)


def _generate(request: HttpRequest, squad: str, slug: str, payload: GenerateIn) -> Status:
    template = prompt_selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    version = resolve_version(request.auth, template, label=payload.label, version=payload.version)
    generation = services.generation_request(
        actor=request.auth,
        version=version,
        variables=payload.variables,
        source=Generation.Source.API,
        target_name=payload.target,
        request=request,
    )
    if generation.finished:  # blocked by the governance policy: nothing was queued
        return Status(200, generation_out(generation))
    if payload.wait:
        deadline = time.monotonic() + payload.timeout
        while time.monotonic() < deadline:
            generation.refresh_from_db()
            if generation.finished:
                return Status(200, generation_out(generation))
            time.sleep(0.1)
    return Status(202, generation_out(generation))


@router.get(
    "/squads/{squad}/generations/{generation_id}",
    response=GenerationOut,
    url_name="generation_detail",
)
def generation_detail(request: HttpRequest, squad: str, generation_id: int) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return generation_out(
        selectors.generation_get_for_user(
            user=request.auth, squad=squad_obj, generation_id=generation_id
        )
    )


class BatchForm(Schema):
    label: str | None = None
    version: int | None = None
    target: str | None = None
    batch_size: int = 32


@router.post("/squads/{squad}/prompts/{slug}/batches", response={201: BatchJobOut})
def batch_create(
    request: HttpRequest,
    squad: str,
    slug: str,
    form: Form[BatchForm],
    file: File[UploadedFile],
) -> Status:
    """Upload rows of variables (.jsonl or .csv). Every row is validated against the input
    schema first; any bad row refuses the upload (first 100 errors with row numbers)."""
    template = prompt_selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )
    version = resolve_version(request.auth, template, label=form.label, version=form.version)
    job = services.batch_job_create(
        actor=request.auth,
        version=version,
        content=file.read(services.MAX_UPLOAD_BYTES + 1),
        filename=file.name or "",
        target_name=form.target,
        batch_size=form.batch_size,
        request=request,
    )
    return Status(201, batch_out(job))


@router.get("/squads/{squad}/batches", response=list[BatchJobOut])
def batch_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    positions = QueuePositions()
    return [
        batch_out(j, positions)
        for j in selectors.batch_job_list_for_user(user=request.auth, squad=squad_obj)[:200]
    ]


@router.get("/squads/{squad}/batches/{job_id}", response=BatchJobOut)
def batch_detail(request: HttpRequest, squad: str, job_id: int) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return batch_out(
        selectors.batch_job_get_for_user(user=request.auth, squad=squad_obj, job_id=job_id)
    )


@router.post("/squads/{squad}/batches/{job_id}/cancel", response=BatchJobOut)
def batch_cancel(request: HttpRequest, squad: str, job_id: int) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    job = selectors.batch_job_get_for_user(user=request.auth, squad=squad_obj, job_id=job_id)
    return batch_out(services.batch_job_cancel(actor=request.auth, job=job, request=request))


class ResultsQuery(Schema):
    status: str | None = None
    format: exports.ResultFormat = exports.ResultFormat.JSONL


@router.get("/squads/{squad}/batches/{job_id}/results", response={200: None})
def batch_results(
    request: HttpRequest, squad: str, job_id: int, q: Query[ResultsQuery]
) -> StreamingHttpResponse:
    """Streamed JSONL or CSV of the job's generations, optionally filtered by status."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    job = selectors.batch_job_get_for_user(user=request.auth, squad=squad_obj, job_id=job_id)
    results = selectors.batch_results(user=request.auth, job=job, status=q.status)
    return exports.streaming_response(results, q.format, name=f"batch-{job.pk}")
