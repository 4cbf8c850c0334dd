from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse
from django.urls import reverse
from ninja import File, Form, Query, Router, Schema, Status
from ninja.files import UploadedFile

from apps.core.exceptions import NotFound
from apps.core.fairshare import QueuePositions, queue_out
from apps.finetune import comparisons, jobs, rows, selectors, services
from apps.finetune.models import Adapter, AdapterComparison, Dataset, DatasetVersion, FineTuneJob
from apps.finetune.schemas import (
    AdapterOut,
    ComparisonCreateIn,
    ComparisonOut,
    DatasetCreateIn,
    DatasetDiffOut,
    DatasetOut,
    DatasetVersionOut,
    FineTuneJobCreateIn,
    FineTuneJobOut,
    FromBatchJobIn,
    FromReviewExportIn,
    RowsPageOut,
    SplitForm,
    TargetAdapterIn,
    TargetAdapterOut,
)
from apps.generation import selectors as generation_selectors
from apps.prompts import selectors as prompt_selectors
from apps.reviews.selectors import queues as queue_selectors
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["datasets"])


def dataset_out(d: Dataset) -> dict[str, Any]:
    version = d.prompt_version
    return {
        "slug": d.slug,
        "name": d.name,
        "description": d.description,
        "format": d.format,
        "prompt": version.template.slug if version else None,
        "prompt_version": version.number if version else None,
        "latest_version": d.latest_version.number if d.latest_version else None,
        "created_by": d.created_by.get_username() if d.created_by else None,
        "created_at": d.created_at,
    }


def version_out(v: DatasetVersion) -> dict[str, Any]:
    dataset = v.dataset
    return {
        "number": v.number,
        "parent": v.parent.number if v.parent else None,
        "source": v.source,
        "source_ref": v.source_ref,
        "sha256": v.sha256,
        "row_count": v.row_count,
        "train_count": v.train_count,
        "eval_count": v.eval_count,
        "split_seed": v.split_seed,
        "eval_fraction": v.eval_fraction,
        "token_stats": v.token_stats,
        "commit_message": v.commit_message,
        "created_by": v.created_by.get_username() if v.created_by else None,
        "created_at": v.created_at,
        "download_url": reverse(
            "api:dataset_version_download",
            kwargs={"squad": dataset.squad.slug, "slug": dataset.slug, "number": v.number},
        ),
    }


def _dataset(request: HttpRequest, squad: str, slug: str) -> Dataset:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return selectors.dataset_get_for_user(user=request.auth, squad=squad_obj, slug=slug)


def _version(request: HttpRequest, squad: str, slug: str, number: int) -> DatasetVersion:
    dataset = _dataset(request, squad, slug)
    return selectors.dataset_version_get(user=request.auth, dataset=dataset, number=number)


@router.get("/squads/{squad}/datasets", response=list[DatasetOut])
def dataset_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return [
        dataset_out(d) for d in selectors.dataset_list_for_user(user=request.auth, squad=squad_obj)
    ]


@router.post("/squads/{squad}/datasets", response={201: DatasetOut})
def dataset_create(request: HttpRequest, squad: str, payload: DatasetCreateIn) -> Status:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    version = None
    if payload.prompt is not None:
        template = prompt_selectors.prompt_template_get_for_user(
            user=request.auth, squad_slug=squad, slug=payload.prompt
        )
        number = payload.prompt_version or (
            template.latest_version.number if template.latest_version else 0
        )
        version = prompt_selectors.prompt_version_get(
            user=request.auth, template=template, number=number
        )
    dataset = services.dataset_create(
        actor=request.auth,
        squad=squad_obj,
        slug=payload.slug,
        name=payload.name,
        format=payload.format,
        description=payload.description,
        prompt_version=version,
        request=request,
    )
    return Status(201, dataset_out(dataset))


@router.get("/squads/{squad}/datasets/{slug}", response=DatasetOut)
def dataset_detail(request: HttpRequest, squad: str, slug: str) -> dict:
    return dataset_out(_dataset(request, squad, slug))


@router.get("/squads/{squad}/datasets/{slug}/versions", response=list[DatasetVersionOut])
def version_list(request: HttpRequest, squad: str, slug: str) -> list:
    dataset = _dataset(request, squad, slug)
    found = selectors.dataset_version_list(user=request.auth, dataset=dataset)
    return [version_out(v) for v in found]


@router.post("/squads/{squad}/datasets/{slug}/versions", response={201: DatasetVersionOut})
def version_upload(
    request: HttpRequest,
    squad: str,
    slug: str,
    form: Form[SplitForm],
    file: File[UploadedFile],
) -> Status:
    """Upload rows (.jsonl, or .csv for prompt/completion and variables datasets). Every
    line is checked; any problem refuses the file with 422 and `errors: [{line, message}]`
    (the first 100; `error_count` counts them all) and nothing is stored."""
    dataset = _dataset(request, squad, slug)
    version = services.dataset_version_upload(
        actor=request.auth,
        dataset=dataset,
        content=file.read(rows.MAX_UPLOAD_BYTES + 1),
        filename=file.name or "",
        commit_message=form.commit_message,
        seed=form.seed,
        eval_fraction=form.eval_fraction,
        target_name=form.target,
        request=request,
    )
    return Status(201, version_out(version))


@router.post(
    "/squads/{squad}/datasets/{slug}/versions/from-review-export",
    response={201: DatasetVersionOut},
)
def version_from_review_export(
    request: HttpRequest, squad: str, slug: str, payload: FromReviewExportIn
) -> Status:
    dataset = _dataset(request, squad, slug)
    queue = queue_selectors.review_queue_get_for_user(
        user=request.auth, squad=dataset.squad, slug=payload.queue
    )
    export = queue_selectors.review_export_get_for_user(
        user=request.auth, queue=queue, export_id=payload.export
    )
    version = services.dataset_version_from_review_export(
        actor=request.auth,
        dataset=dataset,
        export=export,
        commit_message=payload.commit_message,
        seed=payload.seed,
        eval_fraction=payload.eval_fraction,
        target_name=payload.target,
        request=request,
    )
    return Status(201, version_out(version))


@router.post(
    "/squads/{squad}/datasets/{slug}/versions/from-batch-job", response={201: DatasetVersionOut}
)
def version_from_batch_job(
    request: HttpRequest, squad: str, slug: str, payload: FromBatchJobIn
) -> Status:
    dataset = _dataset(request, squad, slug)
    job = generation_selectors.batch_job_get_for_user(
        user=request.auth, squad=dataset.squad, job_id=payload.batch_job
    )
    version = services.dataset_version_from_batch_job(
        actor=request.auth,
        dataset=dataset,
        job=job,
        commit_message=payload.commit_message,
        seed=payload.seed,
        eval_fraction=payload.eval_fraction,
        target_name=payload.target,
        request=request,
    )
    return Status(201, version_out(version))


@router.get("/squads/{squad}/datasets/{slug}/versions/{number}", response=DatasetVersionOut)
def version_detail(request: HttpRequest, squad: str, slug: str, number: int) -> dict:
    return version_out(_version(request, squad, slug, number))


class PageQuery(Schema):
    offset: int = 0
    limit: int = 20


@router.get("/squads/{squad}/datasets/{slug}/versions/{number}/rows", response=RowsPageOut)
def version_rows(
    request: HttpRequest, squad: str, slug: str, number: int, q: Query[PageQuery]
) -> dict:
    """A page of the version's rows (limit at most 200), each with its "split"."""
    version = _version(request, squad, slug, number)
    page = selectors.dataset_rows_page(
        user=request.auth, version=version, offset=q.offset, limit=q.limit
    )
    return {
        "offset": page.offset,
        "limit": page.limit,
        "total": page.total,
        "next_offset": page.next_offset,
        "rows": page.rows,
    }


@router.get(
    "/squads/{squad}/datasets/{slug}/versions/{number}/download",
    response={200: None},
    url_name="dataset_version_download",
)
def version_download(request: HttpRequest, squad: str, slug: str, number: int) -> FileResponse:
    version = _version(request, squad, slug, number)
    response = FileResponse(
        open(version.path, "rb"),  # noqa: SIM115 — FileResponse closes it
        as_attachment=True,
        filename=f"{version.dataset.slug}-v{number}.jsonl",
        content_type="application/jsonl",
    )
    response["ETag"] = f'"{version.sha256}"'
    return response


class DatasetDiffQuery(Schema):
    from_version: int
    to_version: int


@router.get("/squads/{squad}/datasets/{slug}/diff", response=DatasetDiffOut)
def version_diff(request: HttpRequest, squad: str, slug: str, q: Query[DatasetDiffQuery]) -> dict:
    """Row counts and the rows added and removed (by content, first 50 of each)."""
    dataset = _dataset(request, squad, slug)
    old = selectors.dataset_version_get(user=request.auth, dataset=dataset, number=q.from_version)
    new = selectors.dataset_version_get(user=request.auth, dataset=dataset, number=q.to_version)
    diff = selectors.dataset_version_diff(user=request.auth, old=old, new=new)
    return {
        "from_version": old.number,
        "to_version": new.number,
        "from_rows": old.row_count,
        "to_rows": new.row_count,
        "added_count": diff.added_count,
        "removed_count": diff.removed_count,
        "unchanged_count": diff.unchanged_count,
        "added": diff.added,
        "removed": diff.removed,
    }


# --- fine-tune jobs and adapters ------------------------------------------------------------


def job_out(job: FineTuneJob, positions: QueuePositions | None = None) -> dict[str, Any]:
    version = job.dataset_version
    adapter = getattr(job, "adapter", None) if job.status == FineTuneJob.Status.SUCCEEDED else None
    return {
        "id": job.pk,
        "status": job.status,
        "dataset": version.dataset.slug,
        "dataset_version": version.number,
        "target": job.target.name,
        "base_model": job.base_model,
        "lora": job.lora,
        "train": job.train,
        "devices": job.devices,
        "step": job.step,
        "total_steps": job.total_steps,
        "epoch": job.epoch,
        "loss": job.loss,
        "smoothed_loss": job.smoothed_loss,
        "eval_loss": job.eval_loss,
        "tokens_per_second": job.tokens_per_second,
        "eta_seconds": job.eta_seconds,
        "learning_rate": job.learning_rate,
        "points": job.points,
        "resumed_at_steps": job.resumed_at_steps,
        "cancel_requested": job.cancel_requested,
        "error": job.error,
        "failure_kind": job.failure_kind,
        "attempts": job.attempts,
        "queue": queue_out(job, positions),
        "adapter": adapter.pk if adapter else None,
        "created_by": job.created_by.get_username() if job.created_by else None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def adapter_out(a: Adapter) -> dict[str, Any]:
    def download(fmt: str) -> str:
        return reverse(
            "api:adapter_download",
            kwargs={"squad": a.squad.slug, "adapter_id": a.pk, "fmt": fmt},
        )

    return {
        "id": a.pk,
        "job": a.job_id,
        "dataset": a.dataset_version.dataset.slug,
        "dataset_version": a.dataset_version.number,
        "sha256": a.sha256,
        "size_bytes": a.size_bytes,
        "base_model": a.base_model,
        "base_model_sha256": a.base_model_sha256,
        "lora_config": a.lora_config,
        "metrics": a.metrics,
        "approved": a.approved,
        "approved_by": a.approved_by.get_username() if a.approved_by else None,
        "approved_at": a.approved_at,
        "created_at": a.created_at,
        "download_tar_gz": download("tar.gz"),
        "download_zip": download("zip"),
    }


def _job(request: HttpRequest, squad: str, job_id: int) -> FineTuneJob:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return selectors.finetune_job_get_for_user(user=request.auth, squad=squad_obj, job_id=job_id)


def _adapter(request: HttpRequest, squad: str, adapter_id: int) -> Adapter:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return selectors.adapter_get_for_user(user=request.auth, squad=squad_obj, adapter_id=adapter_id)


@router.get("/squads/{squad}/finetune-jobs", response=list[FineTuneJobOut], tags=["fine-tuning"])
def finetune_job_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    found = selectors.finetune_job_list_for_user(user=request.auth, squad=squad_obj)
    positions = QueuePositions()
    return [job_out(j, positions) for j in found]


@router.post("/squads/{squad}/finetune-jobs", response={201: FineTuneJobOut}, tags=["fine-tuning"])
def finetune_job_create(request: HttpRequest, squad: str, payload: FineTuneJobCreateIn) -> Status:
    """Queue a LoRA fine-tune on the gpu queue. Settings are checked first (422 naming the
    field, e.g. `lora.target_modules` with the module names the model does not have)."""
    dataset = _dataset(request, squad, payload.dataset)
    number = payload.version or (dataset.latest_version.number if dataset.latest_version else 0)
    version = selectors.dataset_version_get(user=request.auth, dataset=dataset, number=number)
    job = jobs.finetune_job_create(
        actor=request.auth,
        dataset_version=version,
        target_name=payload.target,
        base_model=payload.base_model,
        lora=payload.lora.dict(exclude_none=True),
        train=payload.train.dict(exclude_none=True),
        devices=payload.devices,
        request=request,
    )
    return Status(201, job_out(job))


@router.get("/squads/{squad}/finetune-jobs/{job_id}", response=FineTuneJobOut, tags=["fine-tuning"])
def finetune_job_detail(request: HttpRequest, squad: str, job_id: int) -> dict:
    """Live progress: step/total, epoch, loss (current, smoothed, eval), tokens/s, ETA and
    the loss points [step, loss, smoothed, eval]."""
    return job_out(_job(request, squad, job_id))


@router.post(
    "/squads/{squad}/finetune-jobs/{job_id}/cancel", response=FineTuneJobOut, tags=["fine-tuning"]
)
def finetune_job_cancel(request: HttpRequest, squad: str, job_id: int) -> dict:
    """A queued job ends at once; a running one stops at its next training step."""
    job = jobs.finetune_job_cancel(actor=request.auth, job=_job(request, squad, job_id))
    return job_out(_job(request, squad, job.pk))


@router.get(
    "/squads/{squad}/finetune-jobs/{job_id}/log", response={200: None}, tags=["fine-tuning"]
)
def finetune_job_log(request: HttpRequest, squad: str, job_id: int) -> HttpResponse:
    """The end of the training log (last 64 KiB) as text/plain."""
    job = _job(request, squad, job_id)
    text = selectors.finetune_job_log(user=request.auth, job=job)
    return HttpResponse(text, content_type="text/plain; charset=utf-8")


@router.get("/squads/{squad}/adapters", response=list[AdapterOut], tags=["fine-tuning"])
def adapter_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return [
        adapter_out(a) for a in selectors.adapter_list_for_user(user=request.auth, squad=squad_obj)
    ]


@router.get("/squads/{squad}/adapters/{adapter_id}", response=AdapterOut, tags=["fine-tuning"])
def adapter_detail(request: HttpRequest, squad: str, adapter_id: int) -> dict:
    return adapter_out(_adapter(request, squad, adapter_id))


@router.post(
    "/squads/{squad}/adapters/{adapter_id}/approval", response=AdapterOut, tags=["fine-tuning"]
)
def adapter_approve(request: HttpRequest, squad: str, adapter_id: int) -> dict:
    """Compliance leads and owners; not whoever started the adapter's job."""
    adapter = jobs.adapter_approve(
        actor=request.auth, adapter=_adapter(request, squad, adapter_id), request=request
    )
    return adapter_out(_adapter(request, squad, adapter.pk))


@router.get(
    "/squads/{squad}/adapters/{adapter_id}/download.{fmt}",
    response={200: None},
    url_name="adapter_download",
    tags=["fine-tuning"],
)
def adapter_download(request: HttpRequest, squad: str, adapter_id: int, fmt: str) -> FileResponse:
    """The adapter directory as .tar.gz or .zip (fmt), e.g. for TGI multi-LoRA serving:
    unpack it where the server reads LORA_ADAPTERS and name it in a remote target's
    adapter_id."""
    adapter = _adapter(request, squad, adapter_id)
    archive = selectors.adapter_archive(user=request.auth, adapter=adapter, fmt=fmt)
    response = FileResponse(
        archive,
        as_attachment=True,
        filename=f"adapter-{adapter.pk}.{fmt}",
        content_type="application/zip" if fmt == "zip" else "application/gzip",
    )
    response["X-Adapter-SHA256"] = adapter.sha256
    return response


@router.put(
    "/squads/{squad}/targets/{name}/adapter", response=TargetAdapterOut, tags=["fine-tuning"]
)
def target_set_adapter(
    request: HttpRequest, squad: str, name: str, payload: TargetAdapterIn
) -> dict:
    """Attach an approved adapter to one of the squad's own local targets (409 "adapter N
    is not approved" otherwise), or detach it with null."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    target = (
        generation_selectors.model_target_list_for_user(user=request.auth, squad=squad_obj)
        .filter(squad=squad_obj, name=name)
        .first()
    )
    if target is None:
        raise NotFound(f"Squad '{squad}' has no model target '{name}'.", field="target")
    adapter = None
    if payload.adapter is not None:
        adapter = _adapter(request, squad, payload.adapter)
    target = jobs.model_target_set_adapter(
        actor=request.auth, target=target, adapter=adapter, request=request
    )
    return {"target": target.name, "adapter": target.lora_adapter_id}


def comparison_out(c: AdapterComparison, positions: QueuePositions | None = None) -> dict[str, Any]:
    return {
        "id": c.pk,
        "adapter": c.adapter_id,
        "adapter_sha256": c.adapter.sha256,
        "status": c.status,
        "inputs": c.inputs,
        "params": c.params,
        "base_loss": c.base_loss,
        "adapter_loss": c.adapter_loss,
        "loss_delta": c.loss_delta,
        "base_ppl": c.base_ppl,
        "adapter_ppl": c.adapter_ppl,
        "ppl_delta": c.ppl_delta,
        "eval_rows": c.eval_rows,
        "eval_tokens": c.eval_tokens,
        "outputs": c.outputs,
        "error": c.error,
        "queue": queue_out(c, positions),
        "created_by": c.created_by.get_username() if c.created_by else None,
        "created_at": c.created_at,
        "finished_at": c.finished_at,
    }


@router.post(
    "/squads/{squad}/adapters/{adapter_id}/comparisons",
    response={201: ComparisonOut},
    tags=["fine-tuning"],
)
def comparison_create(
    request: HttpRequest, squad: str, adapter_id: int, payload: ComparisonCreateIn
) -> Status:
    """Queue a comparison with the base model on the gpu queue: eval loss and perplexity
    of both on the eval split (answer tokens only), and both models' outputs for the
    prompts and eval rows given, with the same parameters and seed."""
    adapter = _adapter(request, squad, adapter_id)
    comparison = comparisons.adapter_comparison_create(
        actor=request.auth,
        adapter=adapter,
        prompts=payload.prompts,
        eval_rows=payload.eval_rows,
        params=payload.params.dict(exclude_none=True),
        request=request,
    )
    comparison.adapter = adapter
    return Status(201, comparison_out(comparison))


@router.get(
    "/squads/{squad}/adapters/{adapter_id}/comparisons",
    response=list[ComparisonOut],
    tags=["fine-tuning"],
)
def comparison_list(request: HttpRequest, squad: str, adapter_id: int) -> list:
    adapter = _adapter(request, squad, adapter_id)
    found = selectors.adapter_comparison_list_for_user(user=request.auth, adapter=adapter)
    out = []
    positions = QueuePositions()
    for c in found:
        c.adapter = adapter
        out.append(comparison_out(c, positions))
    return out


@router.get(
    "/squads/{squad}/adapters/{adapter_id}/comparisons/{comparison_id}",
    response=ComparisonOut,
    tags=["fine-tuning"],
)
def comparison_detail(
    request: HttpRequest, squad: str, adapter_id: int, comparison_id: int
) -> dict:
    """Poll until `status` is succeeded or failed."""
    adapter = _adapter(request, squad, adapter_id)
    comparison = selectors.adapter_comparison_get_for_user(
        user=request.auth, adapter=adapter, comparison_id=comparison_id
    )
    return comparison_out(comparison)
