"""REST operations of output review queues, under /squads/{squad}/review-queues."""

from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.http import FileResponse, HttpRequest
from django.urls import reverse
from ninja import Query, Router, Status

from apps.core.exceptions import NotFound, ValidationFailed
from apps.generation.selectors import batch_job_get_for_user
from apps.reviews.models import Annotation, ReviewExport, ReviewItem, ReviewQueue
from apps.reviews.schemas.queues import (
    AdjudicationIn,
    AnnotationIn,
    AnnotationOut,
    ExportOut,
    ItemOut,
    ItemPageOut,
    ItemsAddedOut,
    ItemsAddIn,
    ItemsFromBatchIn,
    ItemsQuery,
    QueueCreateIn,
    QueueDashboardOut,
    QueueOut,
    QueueUpdateIn,
)
from apps.reviews.selectors import queues as selectors
from apps.reviews.services import queues as services
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["review queues"])
Q = "/squads/{squad}/review-queues"


def _queue(request: HttpRequest, squad: str, queue: str) -> ReviewQueue:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return selectors.review_queue_get_for_user(user=request.auth, squad=squad_obj, slug=queue)


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def queue_out(queue: ReviewQueue) -> dict[str, Any]:
    stats = queue.stats or {}
    return {
        "slug": queue.slug,
        "name": queue.name,
        "instructions": queue.instructions,
        "rubric": queue.rubric,
        "overlap": queue.overlap,
        "annotator_roles": queue.annotator_roles,
        "items": stats.get("items", 0),
        "annotations": stats.get("annotations", 0),
        "created_by": _username(queue.created_by),
        "created_at": queue.created_at,
        "archived_at": queue.archived_at,
    }


def annotation_out(a: Annotation) -> dict[str, Any]:
    return {
        "id": a.pk,
        "item": a.item_id,
        "reviewer": a.reviewer.get_username(),
        "verdict": a.verdict,
        "scores": a.scores,
        "edited_output": a.edited_output,
        "edit_distance": a.edit_distance,
        "comment": a.comment,
        "seconds_spent": a.seconds_spent,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
    }


def item_summary(item: ReviewItem) -> dict[str, Any]:
    version = item.prompt_version
    return {
        "id": item.pk,
        "source": item.source,
        "generation": item.generation_id,
        "prompt": {
            "id": version.pk,
            "template": version.template.slug,
            "number": version.number,
            "hash": version.content_hash,
        }
        if version is not None
        else None,
        "model_name": item.model_name,
        "claims": item.claims,
        "is_full": item.is_full,
        "annotation_count": item.annotation_count,
        "approvals": item.approvals,
        "disagreement": item.disagreement,
        "adjudicated": {
            "verdict": item.adjudicated_verdict,
            "output": item.adjudicated_output,
            "by": _username(item.adjudicated_by),
            "at": item.adjudicated_at,
            "note": item.adjudication_note,
        }
        if item.adjudicated_at is not None
        else None,
        "created_at": item.created_at,
    }


def item_out(item: ReviewItem, annotations: list[Annotation]) -> dict[str, Any]:
    return {
        **item_summary(item),
        "inputs": item.inputs,
        "output": item.output,
        "annotations": [annotation_out(a) for a in annotations],
    }


def export_out(export: ReviewExport, squad: str, queue: ReviewQueue) -> dict[str, Any]:
    return {
        "id": export.pk,
        "queue": queue.slug,
        "created_by": _username(export.created_by),
        "created_at": export.created_at,
        "row_count": export.row_count,
        "sha256": export.sha256,
        "download_url": reverse(
            "api:review_export_download",
            kwargs={"squad": squad, "queue": queue.slug, "export_id": export.pk},
        ),
    }


@router.get(Q, response=list[QueueOut])
def queue_list(request: HttpRequest, squad: str, archived: bool = False) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    queues = selectors.review_queue_list_for_user(
        user=request.auth, squad=squad_obj, include_archived=archived
    )
    return [queue_out(q) for q in queues]


@router.post(Q, response={201: QueueOut})
def queue_create(request: HttpRequest, squad: str, payload: QueueCreateIn) -> Status:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    queue = services.review_queue_create(
        actor=request.auth, squad=squad_obj, request=request, **payload.dict()
    )
    return Status(201, queue_out(queue))


@router.get(Q + "/{queue}", response=QueueOut)
def queue_detail(request: HttpRequest, squad: str, queue: str) -> dict:
    return queue_out(_queue(request, squad, queue))


@router.patch(Q + "/{queue}", response=QueueOut)
def queue_update(request: HttpRequest, squad: str, queue: str, payload: QueueUpdateIn) -> dict:
    updated = services.review_queue_update(
        actor=request.auth,
        queue=_queue(request, squad, queue),
        request=request,
        **payload.dict(exclude_unset=True),
    )
    return queue_out(updated)


@router.get(Q + "/{queue}/dashboard", response=QueueDashboardOut)
def queue_dashboard(request: HttpRequest, squad: str, queue: str) -> dict:
    return selectors.review_queue_dashboard(user=request.auth, queue=_queue(request, squad, queue))


@router.get(Q + "/{queue}/items", response=ItemPageOut)
def item_list(request: HttpRequest, squad: str, queue: str, q: Query[ItemsQuery]) -> dict:
    page = selectors.review_item_list_for_user(
        user=request.auth, queue=_queue(request, squad, queue), **q.dict()
    )
    return {"items": [item_summary(i) for i in page.items], "next_after": page.next_after}


@router.post(Q + "/{queue}/items", response={201: ItemsAddedOut})
def item_add(request: HttpRequest, squad: str, queue: str, payload: ItemsAddIn) -> Status:
    """Add generations by id, or outputs from outside (`items`) — one of the two. Any bad
    entry refuses the whole request."""
    queue_obj = _queue(request, squad, queue)
    if (payload.generations is None) == (payload.items is None):
        raise ValidationFailed("Send either generations (ids) or items, not both.", field="body")
    if payload.generations is not None:
        generations = selectors.generations_for_review(
            user=request.auth, squad=queue_obj.squad, ids=payload.generations
        )
        added = services.review_items_add(
            actor=request.auth, queue=queue_obj, generations=generations, request=request
        )
    else:
        added = services.review_items_add_external(
            actor=request.auth, queue=queue_obj, items=payload.items, request=request
        )
    return Status(201, asdict(added))


@router.post(Q + "/{queue}/items/from-batch", response={201: ItemsAddedOut})
def item_add_from_batch(
    request: HttpRequest, squad: str, queue: str, payload: ItemsFromBatchIn
) -> Status:
    """Add a batch job's succeeded rows: all, `n` at random, or `percent` of them."""
    queue_obj = _queue(request, squad, queue)
    job = batch_job_get_for_user(user=request.auth, squad=queue_obj.squad, job_id=payload.batch)
    added = services.review_items_from_batch(
        actor=request.auth,
        queue=queue_obj,
        batch_job=job,
        mode=payload.mode,
        n=payload.n,
        percent=payload.percent,
        seed=payload.seed,
        request=request,
    )
    return Status(201, asdict(added))


@router.post(Q + "/{queue}/next", response={200: ItemOut, 204: None})
def item_next(request: HttpRequest, squad: str, queue: str) -> Status:
    """Claim the next item for you (your open claim first); 204 when none is left."""
    item = services.review_next_item(actor=request.auth, queue=_queue(request, squad, queue))
    if item is None:
        return Status(204, None)
    # An item you are offered is one you have not annotated, and others' are hidden.
    return Status(200, item_out(item, []))


@router.get(Q + "/{queue}/items/{item_id}", response=ItemOut)
def item_detail(request: HttpRequest, squad: str, queue: str, item_id: int) -> dict:
    item = selectors.review_item_get_for_user(
        user=request.auth, queue=_queue(request, squad, queue), item_id=item_id
    )
    return item_out(item, list(item.annotations.all()))


@router.post(Q + "/{queue}/items/{item_id}/annotations", response=AnnotationOut)
def item_annotate(
    request: HttpRequest, squad: str, queue: str, item_id: int, payload: AnnotationIn
) -> dict:
    """Your verdict, scores, optional edit and comment; again to change them."""
    item = selectors.review_item_get_for_user(
        user=request.auth, queue=_queue(request, squad, queue), item_id=item_id
    )
    annotation = services.review_annotate(
        actor=request.auth, item=item, request=request, **payload.dict()
    )
    return annotation_out(annotation)


@router.post(Q + "/{queue}/items/{item_id}/adjudication", response=ItemOut)
def item_adjudicate(
    request: HttpRequest, squad: str, queue: str, item_id: int, payload: AdjudicationIn
) -> dict:
    queue_obj = _queue(request, squad, queue)
    item = selectors.review_item_get_for_user(user=request.auth, queue=queue_obj, item_id=item_id)
    settled = services.review_adjudicate(
        actor=request.auth, item=item, request=request, **payload.dict()
    )
    return item_out(settled, list(item.annotations.all()))


@router.get(Q + "/{queue}/exports", response=list[ExportOut])
def export_list(request: HttpRequest, squad: str, queue: str) -> list:
    queue_obj = _queue(request, squad, queue)
    exports = selectors.review_export_list_for_user(user=request.auth, queue=queue_obj)
    return [export_out(e, squad, queue_obj) for e in exports[:200]]


@router.post(Q + "/{queue}/exports", response={201: ExportOut})
def export_create(request: HttpRequest, squad: str, queue: str) -> Status:
    """Write the approved (and edited) outputs as JSONL training rows with lineage."""
    queue_obj = _queue(request, squad, queue)
    export = services.review_export(actor=request.auth, queue=queue_obj, request=request)
    return Status(201, export_out(export, squad, queue_obj))


@router.get(
    Q + "/{queue}/exports/{export_id}/download",
    response={200: None},
    url_name="review_export_download",
)
def export_download(request: HttpRequest, squad: str, queue: str, export_id: int) -> FileResponse:
    queue_obj = _queue(request, squad, queue)
    export = selectors.review_export_get_for_user(
        user=request.auth, queue=queue_obj, export_id=export_id
    )
    path = Path(export.path)
    if not path.is_file():
        raise NotFound(f"The file of export {export.pk} is missing from the data directory.")
    response = FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"{queue_obj.slug}-export-{export.pk}.jsonl",
        content_type="application/x-ndjson; charset=utf-8",
    )
    response["X-Content-SHA256"] = export.sha256
    return response
