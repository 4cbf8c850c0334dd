"""HTML views of output review queues: the squad's queues, the create/edit form (a row per
score of the rubric), the dashboard (progress, reviewers, score distributions, agreement,
disagreements to adjudicate, items, hand-added items, export), an item's page, the
annotator (one item at a time, its panel swapped by htmx) and the forms that send a batch
job's rows or one generation to a queue.

Each view parses the request, calls one reviews service or selector (the same ones the API
calls) and renders a page, or one of its partials when htmx asks. Errors a person can fix
render inline with their status code; a refused permission renders the 403/404 page."""

import json
import re
import uuid
from pathlib import Path
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.exceptions import ApplicationError, NotFound, ValidationFailed
from apps.core.http import parse_id
from apps.core.views import form_error, number_or_text, parse_int, partial_template
from apps.generation import selectors as generation_selectors
from apps.reviews.edits import input_fields, word_diff
from apps.reviews.models import Annotation, ReviewItem, ReviewQueue
from apps.reviews.selectors import queues as selectors
from apps.reviews.services import queues as services
from apps.squads.access import has_squad_permission, require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import (
    ADJUDICATE_OUTPUTS,
    EXPORT_REVIEWED_OUTPUTS,
    MANAGE_DATASETS,
    MANAGE_REVIEW_QUEUES,
    Role,
)
from apps.squads.selectors import squad_get_for_user

ITEMS_PAGE = 50
EXPORTS_SHOWN = 5
# A numeric score with at most this many values is offered as choices (digit keys).
MAX_CHOICES = 11
SCORE_KINDS = ("numeric", "categorical", "boolean")
ANNOTATOR_ROLES = [r for r in Role if r != Role.VIEWER]
ROW_WHERE = re.compile(r"^rubric\[(\d+)\]\.?(\w*)")


def _status(error: ApplicationError | None) -> int:
    return error.status_code if error else 200


def _field_errors(exc: ApplicationError | None) -> dict[str, list[str]]:
    """Every problem of an error by the field it names (`rubric[1].max`, `scores.tone`)."""
    if exc is None:
        return {}
    problems = exc.extra if isinstance(exc.extra, list) else None
    if not problems or not all(isinstance(p, dict) and "field" in p for p in problems):
        problems = [{"field": exc.field or "", "message": exc.message}]
    by_field: dict[str, list[str]] = {}
    for problem in problems:
        by_field.setdefault(problem["field"], []).append(problem["message"])
    return by_field


def _text(raw: str | None) -> str:
    """Browsers submit textarea newlines as CRLF; store what the user sees."""
    return (raw or "").replace("\r\n", "\n")


def _changed(raw: str | None, original: str) -> str | None:
    """The edited output, or None when the editor still holds the original."""
    if raw is None:
        return None
    edited = _text(raw)
    return None if edited == original.replace("\r\n", "\n") else edited


def _queue(request: HttpRequest, squad: str, queue: str) -> ReviewQueue:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    return selectors.review_queue_get_for_user(user=request.user, squad=squad_obj, slug=queue)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        value = round(value, 9)
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _shown(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return None if value is None else _fmt(value)


# --- queue list and form -------------------------------------------------------------------


def _row_stats(queue: ReviewQueue) -> dict[str, int]:
    stats = queue.stats or {}
    return {
        "items": stats.get("items", 0),
        "annotations": stats.get("annotations", 0),
        "target": stats.get("items", 0) * queue.overlap,
        "disagreements": stats.get("disagreements", 0),
    }


@login_required
@require_GET
def queue_list(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's review queues (archived ones too with ?archived=1)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    archived = request.GET.get("archived") == "1"
    queues = selectors.review_queue_list_for_user(
        user=request.user, squad=squad_obj, include_archived=archived
    )
    rows = [
        {
            "queue": q,
            "can_annotate": q.archived_at is None
            and selectors.can_annotate(user=request.user, queue=q),
            **_row_stats(q),
        }
        for q in queues
    ]
    context = {
        "squad": squad_obj,
        "rows": rows,
        "archived": archived,
        "can_manage": has_squad_permission(request.user, squad_obj, MANAGE_REVIEW_QUEUES),
    }
    return render(request, "reviews/queues/list.html", context)


def _new_key() -> str:
    return uuid.uuid4().hex[:8]


def _score_row(values: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
    """One row of the rubric editor: the text of each setting."""
    options = values.get("options", "")
    return {
        "key": key or _new_key(),
        "name": values.get("name", ""),
        "label": values.get("label", ""),
        "kind": values.get("kind", "numeric"),
        "min": _fmt(values["min"]) if values.get("min") is not None else "",
        "max": _fmt(values["max"]) if values.get("max") is not None else "",
        "step": _fmt(values["step"]) if values.get("step") is not None else "",
        "options": "\n".join(options) if isinstance(options, list) else options,
        "description": values.get("description", ""),
        "required": bool(values.get("required")),
        "errors": {},
    }


def _form_from_queue(queue: ReviewQueue | None) -> dict[str, Any]:
    if queue is None:
        return {
            "name": "",
            "instructions": "",
            "overlap": "1",
            "annotator_roles": [Role.SME, Role.COMPLIANCE],
            "archived": False,
            "rows": [_score_row({"name": "quality", "min": 1, "max": 5, "required": True})],
        }
    return {
        "name": queue.name,
        "instructions": queue.instructions,
        "overlap": str(queue.overlap),
        "annotator_roles": list(queue.annotator_roles),
        "archived": queue.archived_at is not None,
        "rows": [_score_row(s) for s in queue.rubric],
    }


def _form_from_post(data: QueryDict) -> dict[str, Any]:
    required = set(data.getlist("score_required"))
    rows = []
    for key in data.getlist("score_row"):
        values = {
            name: _text(data.get(f"score-{key}-{name}", ""))
            for name in ("name", "label", "kind", "min", "max", "step", "options", "description")
        }
        rows.append(_score_row({**values, "required": key in required}, key=key))
    return {
        "name": data.get("name", ""),
        "instructions": _text(data.get("instructions", "")),
        "overlap": data.get("overlap", "").strip(),
        "annotator_roles": data.getlist("annotator_roles"),
        "archived": data.get("archived") == "on",
        "rubric_editable": data.get("rubric") == "rows",
        "rows": rows,
    }


def _rubric(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rubric as the services take it: each row's settings for its kind only, typed
    where the text allows (the services name what is wrong, as `rubric[i].setting`)."""
    rubric = []
    for row in rows:
        kind = row["kind"]
        score: dict[str, Any] = {
            "name": row["name"].strip(),
            "kind": kind,
            "required": row["required"],
        }
        if row["label"].strip():
            score["label"] = row["label"].strip()
        if row["description"].strip():
            score["description"] = row["description"].strip()
        if kind == "numeric":
            score["min"] = number_or_text(row["min"])
            score["max"] = number_or_text(row["max"])
            if row["step"].strip():
                score["step"] = number_or_text(row["step"])
        elif kind == "categorical":
            score["options"] = [o.strip() for o in row["options"].split("\n") if o.strip()]
        rubric.append(score)
    return rubric


def _place_errors(form: dict[str, Any], exc: ApplicationError | None) -> dict[str, list[str]]:
    """Errors by form field; rubric problems go on their row and setting."""
    by_field: dict[str, list[str]] = {}
    for where, messages in _field_errors(exc).items():
        row = ROW_WHERE.match(where)
        if row and int(row.group(1)) < len(form["rows"]):
            errors = form["rows"][int(row.group(1))]["errors"]
            errors.setdefault(row.group(2) or "row", []).extend(messages)
        else:
            by_field.setdefault(where.split("[")[0] or "form", []).extend(messages)
    return by_field


def _form_context(
    request: HttpRequest,
    squad: Squad,
    form: dict[str, Any],
    *,
    queue: ReviewQueue | None = None,
    error: ApplicationError | None = None,
) -> dict[str, Any]:
    locked = queue is not None and (queue.stats or {}).get("annotations", 0) > 0
    return {
        "squad": squad,
        "queue": queue,
        "form": form,
        "rubric_locked": locked,
        "roles": [(r.value, r.label) for r in ANNOTATOR_ROLES],
        "kinds": SCORE_KINDS,
        "error": error,
        "field_errors": _place_errors(form, error),
    }


def _queue_fields(form: dict[str, Any]) -> dict[str, Any]:
    overlap = number_or_text(form["overlap"])
    return {
        "name": form["name"],
        "instructions": form["instructions"],
        "overlap": 1 if overlap is None else overlap,
        "annotator_roles": form["annotator_roles"],
    }


@login_required
@require_http_methods(["GET", "POST"])
def queue_new(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    require_squad_permission(request.user, squad_obj, MANAGE_REVIEW_QUEUES)
    if request.method == "GET":
        context = _form_context(request, squad_obj, _form_from_queue(None))
        return render(request, "reviews/queues/form.html", context)
    form = _form_from_post(request.POST)
    try:
        queue = services.review_queue_create(
            actor=request.user,
            squad=squad_obj,
            rubric=_rubric(form["rows"]),
            request=request,
            **_queue_fields(form),
        )
    except ApplicationError as exc:
        context = _form_context(request, squad_obj, form, error=form_error(exc))
        return render(request, "reviews/queues/form.html", context, status=exc.status_code)
    return redirect("reviews:queue", squad=squad, queue=queue.slug)


@login_required
@require_http_methods(["GET", "POST"])
def queue_edit(request: HttpRequest, squad: str, queue: str) -> HttpResponse:
    """Name, instructions, overlap, annotator roles, archived; the rubric until the queue
    has annotations (the service refuses a change after that)."""
    queue_obj = _queue(request, squad, queue)
    require_squad_permission(request.user, queue_obj.squad, MANAGE_REVIEW_QUEUES)
    if request.method == "GET":
        context = _form_context(
            request, queue_obj.squad, _form_from_queue(queue_obj), queue=queue_obj
        )
        return render(request, "reviews/queues/form.html", context)
    form = _form_from_post(request.POST)
    try:
        updated = services.review_queue_update(
            actor=request.user,
            queue=queue_obj,
            rubric=_rubric(form["rows"]) if form["rubric_editable"] else None,
            archived=form["archived"],
            request=request,
            **_queue_fields(form),
        )
    except ApplicationError as exc:
        if not form["rubric_editable"]:
            form["rows"] = _form_from_queue(queue_obj)["rows"]
        context = _form_context(
            request, queue_obj.squad, form, queue=queue_obj, error=form_error(exc)
        )
        return render(request, "reviews/queues/form.html", context, status=exc.status_code)
    return redirect("reviews:queue", squad=squad, queue=updated.slug)


@login_required
@require_GET
def score_row(request: HttpRequest, squad: str) -> HttpResponse:
    """A blank rubric row for the editor's "Add score" (nothing for "Remove")."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    if request.GET.get("remove"):
        return HttpResponse("")
    context = {"squad": squad_obj, "row": _score_row({}), "kinds": SCORE_KINDS}
    return render(request, "reviews/queues/form.html#score-row", context)


# --- dashboard -----------------------------------------------------------------------------


def _bars(distribution: list[dict[str, Any]]) -> list[dict[str, Any]]:
    top = max((d["count"] for d in distribution), default=0)
    total = sum(d["count"] for d in distribution)
    return [
        {
            "value": _shown(d["value"]),
            "count": d["count"],
            "width": round(d["count"] * 100 / top) if top else 0,
            "share": d["count"] * 100 / total if total else None,
        }
        for d in distribution
    ]


def _items_context(request: HttpRequest, queue: ReviewQueue) -> dict[str, Any]:
    state = request.GET.get("state", "all")
    after = parse_int(request.GET.get("after"), field="after", label="after") or 0
    page = selectors.review_item_list_for_user(
        user=request.user, queue=queue, after=after, limit=ITEMS_PAGE, state=state
    )
    return {
        "squad": queue.squad,
        "queue": queue,
        "items": page.items,
        "next_after": page.next_after,
        "after": after,
        "state": state,
        "states": [("all", "All"), ("open", "Open"), ("disagreement", "Disagreements")],
    }


def _export_datasets(user: Any, squad: Squad) -> list[Any]:
    """Datasets an export can become a version of (chat or variables; one query), for
    people who may add dataset versions."""
    from apps.finetune.models import DatasetFormat
    from apps.finetune.selectors import dataset_list_for_user

    if not has_squad_permission(user, squad, MANAGE_DATASETS):
        return []
    formats = (DatasetFormat.CHAT, DatasetFormat.VARIABLES)
    return list(dataset_list_for_user(user=user, squad=squad).filter(format__in=formats))


def _dashboard_context(request: HttpRequest, queue: ReviewQueue, **extra: Any) -> dict[str, Any]:
    user = request.user
    board = selectors.review_queue_dashboard(user=user, queue=queue)
    top = max((r["annotated"] for r in board["reviewers"]), default=0)
    for reviewer in board["reviewers"]:
        reviewer["width"] = round(reviewer["annotated"] * 100 / top) if top else 0
    for score in board["scores"]:
        score["bars"] = _bars(score["distribution"])
    verdicts = [{"value": v, "count": n} for v, n in board["verdicts"].items()]
    can_export = has_squad_permission(user, queue.squad, EXPORT_REVIEWED_OUTPUTS)
    exports = (
        list(selectors.review_export_list_for_user(user=user, queue=queue)[:EXPORTS_SHOWN])
        if can_export
        else []
    )
    context = {
        "squad": queue.squad,
        "queue": queue,
        "board": board,
        "verdict_bars": _bars(verdicts),
        "can_manage": has_squad_permission(user, queue.squad, MANAGE_REVIEW_QUEUES),
        "can_adjudicate": has_squad_permission(user, queue.squad, ADJUDICATE_OUTPUTS),
        "can_export": can_export,
        "can_annotate": queue.archived_at is None
        and selectors.can_annotate(user=user, queue=queue),
        "exports": exports,
        "export_datasets": _export_datasets(user, queue.squad) if exports else [],
        **_items_context(request, queue),
    }
    return {**context, **extra}


@login_required
@require_GET
def queue_detail(request: HttpRequest, squad: str, queue: str) -> HttpResponse:
    """The dashboard; its item list pages by itself (htmx target `queue-items`)."""
    queue_obj = _queue(request, squad, queue)
    if request.htmx and request.htmx.target == "queue-items":
        context = _items_context(request, queue_obj)
        return render(request, "reviews/queues/detail.html#items", context)
    return render(request, "reviews/queues/detail.html", _dashboard_context(request, queue_obj))


def _parse_ids(raw: str) -> list[int]:
    ids = []
    for part in re.split(r"[\s,]+", raw.strip()):
        if not part:
            continue
        number = parse_id(part)
        if number is None:
            raise ValidationFailed(
                f"Generation ids are whole numbers separated by commas or spaces "
                f"(got '{part[:40]}').",
                field="generations",
            )
        ids.append(number)
    if not ids:
        raise ValidationFailed("Give the id of at least one generation.", field="generations")
    return ids


@login_required
@require_POST
def items_add(request: HttpRequest, squad: str, queue: str) -> HttpResponse:
    """Add finished generations of the squad by id."""
    queue_obj = _queue(request, squad, queue)
    raw = request.POST.get("generations", "")
    added = error = None
    try:
        generations = selectors.generations_for_review(
            user=request.user, squad=queue_obj.squad, ids=_parse_ids(raw)
        )
        added = services.review_items_add(
            actor=request.user, queue=queue_obj, generations=generations, request=request
        )
    except ApplicationError as exc:
        if not request.htmx:
            raise
        error = form_error(exc)
    if not request.htmx:
        return redirect("reviews:queue", squad=squad, queue=queue_obj.slug)
    context = {
        "squad": queue_obj.squad,
        "queue": queue_obj,
        "added": added,
        "add_error": error,
        "add_value": "" if added else raw,
    }
    return render(request, "reviews/queues/detail.html#add-items", context, status=_status(error))


@login_required
@require_POST
def export_create(request: HttpRequest, squad: str, queue: str) -> HttpResponse:
    """Write the approved outputs as JSONL; the new export is offered for download."""
    queue_obj = _queue(request, squad, queue)
    try:
        export = services.review_export(actor=request.user, queue=queue_obj, request=request)
    except ApplicationError as exc:
        if not request.htmx:
            raise
        context = {
            "squad": queue_obj.squad,
            "queue": queue_obj,
            "can_export": True,
            "export_error": form_error(exc),
            "exports": list(
                selectors.review_export_list_for_user(user=request.user, queue=queue_obj)[
                    :EXPORTS_SHOWN
                ]
            ),
        }
        return render(
            request, "reviews/queues/detail.html#exports", context, status=exc.status_code
        )
    if not request.htmx:
        return redirect(reverse("reviews:queue", args=[squad, queue_obj.slug]) + "#exports")
    context = {
        "squad": queue_obj.squad,
        "queue": queue_obj,
        "can_export": True,
        "created": export,
        "export_datasets": _export_datasets(request.user, queue_obj.squad),
        "exports": list(
            selectors.review_export_list_for_user(user=request.user, queue=queue_obj)[
                :EXPORTS_SHOWN
            ]
        ),
    }
    return render(request, "reviews/queues/detail.html#exports", context)


@login_required
@require_GET
def export_download(request: HttpRequest, squad: str, queue: str, export_id: int) -> FileResponse:
    queue_obj = _queue(request, squad, queue)
    export = selectors.review_export_get_for_user(
        user=request.user, queue=queue_obj, export_id=export_id
    )
    file = Path(export.path)
    if not file.is_file():
        raise NotFound(f"The file of export {export.pk} is missing from the data directory.")
    response = FileResponse(
        file.open("rb"),
        as_attachment=True,
        filename=f"{queue_obj.slug}-export-{export.pk}.jsonl",
        content_type="application/x-ndjson; charset=utf-8",
    )
    response["X-Content-SHA256"] = export.sha256
    return response


# --- one item and adjudication -------------------------------------------------------------


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _item_context(
    request: HttpRequest, queue: ReviewQueue, item: ReviewItem, **extra: Any
) -> dict[str, Any]:
    can_adjudicate = has_squad_permission(request.user, queue.squad, ADJUDICATE_OUTPUTS)
    annotations = list(item.annotations.all())
    latest_edit = next(
        (a.edited_output for a in reversed(annotations) if a.edit_distance is not None), ""
    )
    return {
        "squad": queue.squad,
        "queue": queue,
        "item": item,
        "inputs_pretty": _pretty(item.inputs),
        "input_fields": input_fields(item.inputs),
        "annotations": [
            {
                "annotation": a,
                "scores": [(s["label"], _shown(a.scores.get(s["name"]))) for s in queue.rubric],
                "diff": word_diff(item.output, a.edited_output)
                if a.edit_distance is not None
                else [],
            }
            for a in annotations
        ],
        "can_adjudicate": can_adjudicate,
        "adjudicate_form": {
            "verdict": item.adjudicated_verdict,
            "output": item.adjudicated_output or latest_edit or item.output,
            "note": item.adjudication_note,
        },
        **extra,
    }


@login_required
@require_GET
def item_detail(request: HttpRequest, squad: str, queue: str, item_id: int) -> HttpResponse:
    """An item with the annotations the user may see (all of them for adjudicators and
    queue managers, their own otherwise); for htmx, its adjudication panel."""
    queue_obj = _queue(request, squad, queue)
    item = selectors.review_item_get_for_user(user=request.user, queue=queue_obj, item_id=item_id)
    page = partial_template(request, "reviews/queues/item.html", "adjudication")
    return render(request, page, _item_context(request, queue_obj, item))


@login_required
@require_POST
def item_adjudicate(request: HttpRequest, squad: str, queue: str, item_id: int) -> HttpResponse:
    queue_obj = _queue(request, squad, queue)
    item = selectors.review_item_get_for_user(user=request.user, queue=queue_obj, item_id=item_id)
    form = {
        "verdict": request.POST.get("verdict", ""),
        "output": _text(request.POST.get("output")),
        "note": _text(request.POST.get("note")),
    }
    try:
        item = services.review_adjudicate(
            actor=request.user,
            item=item,
            verdict=form["verdict"],
            output=_changed(request.POST.get("output"), item.output),
            note=form["note"],
            request=request,
        )
    except ApplicationError as exc:
        if not request.htmx:
            raise
        context = _item_context(
            request,
            queue_obj,
            item,
            adjudicate_form=form,
            adjudicate_error=form_error(exc),
            adjudicate_errors=_field_errors(exc),
        )
        return render(
            request, "reviews/queues/item.html#adjudication", context, status=exc.status_code
        )
    if not request.htmx:
        return redirect("reviews:queue_item", squad=squad, queue=queue_obj.slug, item_id=item.pk)
    context = _item_context(request, queue_obj, item, settled=True)
    return render(request, "reviews/queues/item.html#adjudication", context)


# --- the annotator -------------------------------------------------------------------------


def _choices(score: dict[str, Any]) -> list[dict[str, str]] | None:
    """The values a score offers as radio buttons, each with its digit key (shown on the
    page); None for a numeric score with too many values (a number field)."""
    kind = score["kind"]
    if kind == "boolean":
        return [
            {"value": "true", "label": "yes", "key": "1"},
            {"value": "false", "label": "no", "key": "2"},
        ]
    if kind == "categorical":
        return [
            {"value": o, "label": o, "key": str(i + 1) if i < 9 else ""}
            for i, o in enumerate(score["options"])
        ]
    low, high, step = score["min"], score["max"], score.get("step") or 1
    steps = (high - low) / step
    if abs(steps - round(steps)) > 1e-9 or round(steps) + 1 > MAX_CHOICES:
        return None
    choices = []
    for i in range(round(steps) + 1):
        value = _fmt(low + i * step)
        key = value if value.isdigit() and len(value) == 1 else ""
        choices.append({"value": value, "label": value, "key": key})
    return choices


def _score_fields(
    rubric: list[dict[str, Any]], values: dict[str, str], errors: dict[str, list[str]]
) -> list[dict[str, Any]]:
    fields = []
    for score in rubric:
        name = score["name"]
        choices = _choices(score)
        fields.append(
            {
                **score,
                "id": f"score-{name}",
                "input": f"score_{name}",
                "value": values.get(name, ""),
                "choices": choices,
                # Digits go to the first such score unless focus is in another score.
                "digits": score["kind"] != "boolean" and bool(choices),
                "errors": errors.get(f"scores.{name}", []),
            }
        )
    return fields


def _own(item: ReviewItem, user: Any) -> Annotation | None:
    return next((a for a in item.annotations.all() if a.reviewer_id == user.pk), None)


def _form_from_annotation(item: ReviewItem, own: Annotation | None) -> dict[str, Any]:
    if own is None:
        return {"verdict": "", "scores": {}, "edited_output": item.output, "comment": ""}
    return {
        "verdict": own.verdict,
        "scores": {name: _fmt(value) for name, value in own.scores.items()},
        "edited_output": own.edited_output if own.edit_distance is not None else item.output,
        "comment": own.comment,
    }


def _panel_context(
    request: HttpRequest,
    queue: ReviewQueue,
    item: ReviewItem | None,
    *,
    own: Annotation | None = None,
    form: dict[str, Any] | None = None,
    error: ApplicationError | None = None,
    saved: Annotation | None = None,
    notice: str = "",
) -> dict[str, Any]:
    """The annotator's panel. `own`: the user's annotation of the item (it is being
    changed); `form`: what was submitted (after a refusal)."""
    errors = _field_errors(error)
    if item is not None and form is None:
        form = _form_from_annotation(item, own)
    annotated = (queue.stats or {}).get("reviewers", {})
    return {
        "squad": queue.squad,
        "queue": queue,
        "item": item,
        "own": own,
        "form": form,
        "fields": _score_fields(queue.rubric, form["scores"], errors) if item else [],
        "inputs_pretty": _pretty(item.inputs) if item else "",
        "input_fields": input_fields(item.inputs) if item else [],
        "output_diff": word_diff(item.output, form["edited_output"])
        if item is not None and form["edited_output"] != item.output
        else [],
        "progress": selectors.annotator_progress_for_user(
            user=request.user, queue=queue, item=item
        ),
        "error": error,
        "field_errors": errors,
        "saved": saved,
        "notice": notice,
        "has_history": own is not None or saved is not None or str(request.user.pk) in annotated,
    }


@login_required
@require_GET
def annotate(request: HttpRequest, squad: str, queue: str) -> HttpResponse:
    """The annotator. Without parameters: the item the service hands this reviewer next
    (their own live claim first, so a reload shows the same item). With ?before=<item>:
    the item they annotated before that one, to look at or change."""
    queue_obj = _queue(request, squad, queue)
    if "before" not in request.GET:
        item = services.review_next_item(actor=request.user, queue=queue_obj)
        context = _panel_context(request, queue_obj, item)
    else:
        before = parse_int(request.GET["before"], field="before", label="before")
        item = selectors.review_item_previous_for_user(
            user=request.user, queue=queue_obj, before=before
        )
        notice = ""
        if item is None and before is not None:
            item = selectors.review_item_get_for_user(
                user=request.user, queue=queue_obj, item_id=before
            )
            notice = "There is no earlier item: this is the first one you annotated here."
        own = _own(item, request.user) if item is not None else None
        context = _panel_context(request, queue_obj, item, own=own, notice=notice)
    return render(
        request, partial_template(request, "reviews/queues/annotate.html", "panel"), context
    )


@login_required
@require_POST
def annotate_next(request: HttpRequest, squad: str, queue: str) -> HttpResponse:
    """The service's next item for this reviewer (`j`)."""
    queue_obj = _queue(request, squad, queue)
    if not request.htmx:
        return redirect("reviews:queue_annotate", squad=squad, queue=queue_obj.slug)
    item = services.review_next_item(actor=request.user, queue=queue_obj)
    return render(
        request, "reviews/queues/annotate.html#panel", _panel_context(request, queue_obj, item)
    )


def _annotation_form(data: QueryDict, rubric: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "verdict": data.get("verdict", ""),
        "scores": {s["name"]: data.get(f"score_{s['name']}", "").strip() for s in rubric},
        "edited_output": _text(data.get("edited_output")),
        "comment": _text(data.get("comment")),
    }


def _scores(form: dict[str, Any], rubric: list[dict[str, Any]]) -> dict[str, Any]:
    """Typed score values for the service, which checks them against the rubric."""
    scores: dict[str, Any] = {}
    for score in rubric:
        raw = form["scores"][score["name"]]
        if not raw:
            continue
        if score["kind"] == "numeric":
            scores[score["name"]] = number_or_text(raw)
        elif score["kind"] == "boolean":
            scores[score["name"]] = {"true": True, "false": False}.get(raw, raw)
        else:
            scores[score["name"]] = raw
    return scores


def _seconds(raw: str | None) -> Any:
    """Seconds measured by the page; the service checks the range."""
    raw = (raw or "").strip()
    return int(raw) if raw.isdigit() else (raw or 0)


@login_required
@require_POST
def item_annotate(request: HttpRequest, squad: str, queue: str, item_id: int) -> HttpResponse:
    """Store the reviewer's verdict, scores, edit, comment and time spent; then the
    service's next item (htmx) or the annotator page."""
    queue_obj = _queue(request, squad, queue)
    item = selectors.review_item_get_for_user(user=request.user, queue=queue_obj, item_id=item_id)
    form = _annotation_form(request.POST, queue_obj.rubric)
    try:
        saved = services.review_annotate(
            actor=request.user,
            item=item,
            verdict=form["verdict"],
            scores=_scores(form, queue_obj.rubric),
            edited_output=_changed(request.POST.get("edited_output"), item.output),
            comment=form["comment"],
            seconds_spent=_seconds(request.POST.get("seconds_spent")),
            request=request,
        )
    except ApplicationError as exc:
        form_error(exc)
        context = _panel_context(
            request, queue_obj, item, own=_own(item, request.user), form=form, error=exc
        )
        page = partial_template(request, "reviews/queues/annotate.html", "panel")
        return render(request, page, context, status=exc.status_code)
    if not request.htmx:
        return redirect("reviews:queue_annotate", squad=squad, queue=queue_obj.slug)
    following = services.review_next_item(actor=request.user, queue=queue_obj)
    context = _panel_context(request, queue_obj, following, saved=saved)
    return render(request, "reviews/queues/annotate.html#panel", context)


# --- sending generations to a queue --------------------------------------------------------


def _manageable_or_nothing(request: HttpRequest, squad: Squad) -> HttpResponse | None:
    """The send forms are embedded in generation pages that every member sees: members
    who may not add items get nothing there, and a 403 when they ask directly."""
    if has_squad_permission(request.user, squad, MANAGE_REVIEW_QUEUES):
        return None
    if request.htmx and request.method == "GET":
        return HttpResponse("")
    require_squad_permission(request.user, squad, MANAGE_REVIEW_QUEUES)
    return None


def _target_queue(request: HttpRequest, squad: Squad) -> ReviewQueue:
    slug = request.POST.get("queue", "").strip()
    if not slug:
        raise ValidationFailed("Choose the review queue.", field="queue")
    return selectors.review_queue_get_for_user(user=request.user, squad=squad, slug=slug)


@login_required
@require_http_methods(["GET", "POST"])
def from_batch(request: HttpRequest, squad: str, job_id: int) -> HttpResponse:
    """ "Send to review queue" on a batch job's page: all succeeded rows, n at random or a
    percentage, with a seed to draw the same sample again."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    job = generation_selectors.batch_job_get_for_user(
        user=request.user, squad=squad_obj, job_id=job_id
    )
    if (nothing := _manageable_or_nothing(request, squad_obj)) is not None:
        return nothing
    data = request.POST if request.method == "POST" else QueryDict()
    form = {
        "queue": data.get("queue", ""),
        "mode": data.get("mode", "all"),
        "n": data.get("n", "").strip(),
        "percent": data.get("percent", "").strip(),
        "seed": data.get("seed", "").strip(),
    }
    added = target = error = None
    if request.method == "POST":
        try:
            target = _target_queue(request, squad_obj)
            added = services.review_items_from_batch(
                actor=request.user,
                queue=target,
                batch_job=job,
                mode=form["mode"],
                n=parse_int(form["n"], field="n", label="n") if form["mode"] == "random" else None,
                percent=number_or_text(form["percent"]) if form["mode"] == "percent" else None,
                seed=parse_int(form["seed"], field="seed", label="The seed"),
                request=request,
            )
        except ApplicationError as exc:
            error = form_error(exc)
    context = {
        "squad": squad_obj,
        "job": job,
        "queues": selectors.review_queue_list_for_user(user=request.user, squad=squad_obj),
        "form": form,
        "added": added,
        "target": target,
        "error": error,
    }
    page = partial_template(request, "reviews/queues/send.html", "from-batch")
    return render(request, page, context, status=_status(error))


@login_required
@require_http_methods(["GET", "POST"])
def from_generation(request: HttpRequest, squad: str, generation_id: int) -> HttpResponse:
    """ "Add to queue" on a generation's page."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    generation = generation_selectors.generation_get_for_user(
        user=request.user, squad=squad_obj, generation_id=generation_id
    )
    if (nothing := _manageable_or_nothing(request, squad_obj)) is not None:
        return nothing
    added = target = error = None
    if request.method == "POST":
        try:
            target = _target_queue(request, squad_obj)
            added = services.review_items_add(
                actor=request.user, queue=target, generations=[generation], request=request
            )
        except ApplicationError as exc:
            error = form_error(exc)
    context = {
        "squad": squad_obj,
        "generation": generation,
        "queues": selectors.review_queue_list_for_user(user=request.user, squad=squad_obj),
        "form": {"queue": request.POST.get("queue", "")},
        "added": added,
        "target": target,
        "error": error,
    }
    page = partial_template(request, "reviews/queues/send.html", "from-generation")
    return render(request, page, context, status=_status(error))


Q = "squads/<slug:squad>/review-queues/"
urlpatterns = [
    path(Q, queue_list, name="queues"),
    path(Q + "new", queue_new, name="queue_new"),
    path(Q + "score-row", score_row, name="queue_score_row"),
    path(Q + "from-batch/<int:job_id>", from_batch, name="queue_from_batch"),
    path(Q + "from-generation/<int:generation_id>", from_generation, name="queue_from_generation"),
    path(Q + "<slug:queue>/", queue_detail, name="queue"),
    path(Q + "<slug:queue>/edit", queue_edit, name="queue_edit"),
    path(Q + "<slug:queue>/annotate", annotate, name="queue_annotate"),
    path(Q + "<slug:queue>/next", annotate_next, name="queue_next"),
    path(Q + "<slug:queue>/items/add", items_add, name="queue_items_add"),
    path(Q + "<slug:queue>/items/<int:item_id>", item_detail, name="queue_item"),
    path(
        Q + "<slug:queue>/items/<int:item_id>/annotate", item_annotate, name="queue_annotate_item"
    ),
    path(
        Q + "<slug:queue>/items/<int:item_id>/adjudicate",
        item_adjudicate,
        name="queue_adjudicate",
    ),
    path(Q + "<slug:queue>/exports", export_create, name="queue_export"),
    path(
        Q + "<slug:queue>/exports/<int:export_id>.jsonl",
        export_download,
        name="queue_export_download",
    ),
]
