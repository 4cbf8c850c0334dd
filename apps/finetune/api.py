from typing import Any

from django.http import FileResponse, HttpRequest
from django.urls import reverse
from ninja import File, Form, Query, Router, Schema, Status
from ninja.files import UploadedFile

from apps.finetune import rows, selectors, services
from apps.finetune.models import Dataset, DatasetVersion
from apps.finetune.schemas import (
    DatasetCreateIn,
    DatasetOut,
    DatasetVersionOut,
    DiffOut,
    FromBatchJobIn,
    FromReviewExportIn,
    RowsPageOut,
    SplitForm,
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


class DiffQuery(Schema):
    from_version: int
    to_version: int


@router.get("/squads/{squad}/datasets/{slug}/diff", response=DiffOut)
def version_diff(request: HttpRequest, squad: str, slug: str, q: Query[DiffQuery]) -> dict:
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
