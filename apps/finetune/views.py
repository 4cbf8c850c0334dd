"""HTML views for datasets: the list with its create form, and a dataset's page (versions,
upload with refused lines listed inline, paged preview and diff swapped in by htmx).
Each view parses the request, calls the finetune services/selectors the API calls, and
renders the page or one of its partials."""

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.core.views import form_error, parse_float, parse_int, partial_template
from apps.finetune import rows, selectors, services
from apps.finetune.models import Dataset, DatasetFormat
from apps.prompts import selectors as prompt_selectors
from apps.squads.access import has_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_DATASETS, RUN_FINETUNE
from apps.squads.selectors import squad_get_for_user

PREVIEW_LIMIT = 20
CREATE_FIELDS = ("slug", "name", "format", "description", "prompt", "prompt_version")
UPLOAD_FIELDS = ("commit_message", "seed", "eval_fraction")


def _list_context(
    request: HttpRequest, squad: Squad, form: dict[str, str], error: ApplicationError | None
) -> dict[str, Any]:
    can_manage = has_squad_permission(request.user, squad, MANAGE_DATASETS)
    context: dict[str, Any] = {
        "squad": squad,
        "datasets": selectors.dataset_list_for_user(user=request.user, squad=squad),
        "can_manage": can_manage,
        "formats": DatasetFormat.choices,
        "form": form,
        "error": error,
    }
    if can_manage:
        context["prompts"] = prompt_selectors.prompt_template_list_for_user(
            user=request.user, squad=squad
        )
    return context


def _create(request: HttpRequest, squad: Squad, form: dict[str, str]) -> Dataset:
    version = None
    if form["format"] == DatasetFormat.VARIABLES and form["prompt"]:
        template = prompt_selectors.prompt_template_get_for_user(
            user=request.user, squad_slug=squad.slug, slug=form["prompt"]
        )
        number = parse_int(form["prompt_version"], field="prompt_version")
        if number is None and template.latest_version is not None:
            number = template.latest_version.number
        version = prompt_selectors.prompt_version_get(
            user=request.user, template=template, number=number or 0
        )
    return services.dataset_create(
        actor=request.user,
        squad=squad,
        slug=form["slug"],
        name=form["name"],
        format=form["format"],
        description=form["description"],
        prompt_version=version,
        request=request,
    )


@login_required
@require_http_methods(["GET", "POST"])
def dataset_list(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's datasets and, for owners and prompt engineers, the create form."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    if request.method == "GET":
        form = dict.fromkeys(CREATE_FIELDS, "") | {"format": DatasetFormat.CHAT}
        return render(
            request, "finetune/dataset_list.html", _list_context(request, squad_obj, form, None)
        )
    form = {name: request.POST.get(name, "").strip() for name in CREATE_FIELDS}
    try:
        dataset = _create(request, squad_obj, form)
    except ApplicationError as exc:
        context = _list_context(request, squad_obj, form, form_error(exc))
        return render(request, "finetune/dataset_list.html", context, status=exc.status_code)
    return redirect("finetune:detail", squad=squad, slug=dataset.slug)


def _json(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True)


def _pretty_rows(page: selectors.RowPage) -> list[dict[str, Any]]:
    return [
        {
            "index": page.offset + i,
            "split": row.get("split", ""),
            "text": json.dumps(
                {k: v for k, v in row.items() if k != "split"}, ensure_ascii=False, indent=1
            ),
        }
        for i, row in enumerate(page.rows)
    ]


def _detail_context(
    request: HttpRequest,
    dataset: Dataset,
    form: dict[str, str] | None = None,
    error: ApplicationError | None = None,
) -> dict[str, Any]:
    versions = list(selectors.dataset_version_list(user=request.user, dataset=dataset))
    context: dict[str, Any] = {
        "squad": dataset.squad,
        "dataset": dataset,
        "versions": versions,
        "can_manage": has_squad_permission(request.user, dataset.squad, MANAGE_DATASETS),
        "can_finetune": has_squad_permission(request.user, dataset.squad, RUN_FINETUNE),
        "form": form or {"commit_message": "", "seed": "", "eval_fraction": ""},
        "error": error,
        "error_rows": error.extra if isinstance(error, rows.RowsRefused) else [],
        "error_total": getattr(error, "total", 0),
        "defaults": {
            "seed": services.DEFAULT_SEED,
            "eval_fraction": services.DEFAULT_EVAL_FRACTION,
        },
    }
    if versions:
        context.update(_preview_context(request, dataset, versions[0].number, 0))
    return context


def _preview_context(
    request: HttpRequest, dataset: Dataset, number: int, offset: int
) -> dict[str, Any]:
    version = selectors.dataset_version_get(user=request.user, dataset=dataset, number=number)
    page = selectors.dataset_rows_page(
        user=request.user, version=version, offset=offset, limit=PREVIEW_LIMIT
    )
    rows = _pretty_rows(page)
    return {
        "preview_version": version,
        "page": page,
        "preview_rows": rows,
        # "Rows 21–40 of 95", counted from 1 like the row numbers shown.
        "page_first": page.offset + 1 if rows else 0,
        "page_last": page.offset + len(rows),
    }


@login_required
@require_http_methods(["GET", "POST"])
def dataset_detail(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    """A dataset's versions, its upload form (POST: a new version) and the latest rows."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    dataset = selectors.dataset_get_for_user(user=request.user, squad=squad_obj, slug=slug)
    if request.method == "GET":
        return render(request, "finetune/dataset_detail.html", _detail_context(request, dataset))
    form = {name: request.POST.get(name, "").strip() for name in UPLOAD_FIELDS}
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise ValidationFailed("Choose a .jsonl or .csv file to upload.", field="file")
        services.dataset_version_upload(
            actor=request.user,
            dataset=dataset,
            content=upload.read(rows.MAX_UPLOAD_BYTES + 1),
            filename=upload.name or "",
            commit_message=form["commit_message"],
            seed=parse_int(form["seed"], field="seed"),
            eval_fraction=parse_float(form["eval_fraction"], field="eval_fraction"),
            request=request,
        )
    except ApplicationError as exc:
        context = _detail_context(request, dataset, form, form_error(exc))
        return render(request, "finetune/dataset_detail.html", context, status=exc.status_code)
    return redirect("finetune:detail", squad=squad, slug=slug)


@login_required
@require_POST
def version_from_review_export(request: HttpRequest, squad: str) -> HttpResponse:
    """From a review queue's dashboard: an export's approved (and edited) rows become the
    chosen dataset's next version (the same service as the API)."""
    from apps.reviews.selectors import queues as review_selectors

    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    dataset = selectors.dataset_get_for_user(
        user=request.user, squad=squad_obj, slug=request.POST.get("dataset", "")
    )
    queue = review_selectors.review_queue_get_for_user(
        user=request.user, squad=squad_obj, slug=request.POST.get("queue", "")
    )
    export_id = parse_int(request.POST.get("export", ""), field="export")
    if export_id is None:
        raise ValidationFailed("Choose an export.", field="export")
    export = review_selectors.review_export_get_for_user(
        user=request.user, queue=queue, export_id=export_id
    )
    try:
        services.dataset_version_from_review_export(
            actor=request.user, dataset=dataset, export=export, request=request
        )
    except ApplicationError as exc:
        context = _detail_context(request, dataset, {}, form_error(exc))
        return render(request, "finetune/dataset_detail.html", context, status=exc.status_code)
    return redirect("finetune:detail", squad=squad, slug=dataset.slug)


@login_required
@require_GET
def version_rows(request: HttpRequest, squad: str, slug: str, number: int) -> HttpResponse:
    """One page of a version's rows (the preview's htmx paging)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    dataset = selectors.dataset_get_for_user(user=request.user, squad=squad_obj, slug=slug)
    offset = parse_int(request.GET.get("offset", ""), field="offset") or 0
    context = {"squad": squad_obj, "dataset": dataset}
    context.update(_preview_context(request, dataset, number, offset))
    return render(
        request, partial_template(request, "finetune/dataset_detail.html", "preview"), context
    )


@login_required
@require_GET
def version_diff(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    """Rows added and removed between two versions (?from=N&to=M)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    dataset = selectors.dataset_get_for_user(user=request.user, squad=squad_obj, slug=slug)
    numbers = [parse_int(request.GET.get(k, ""), field=k) for k in ("from", "to")]
    if None in numbers:
        raise ValidationFailed("Choose two versions to compare.", field="from")
    old, new = (
        selectors.dataset_version_get(user=request.user, dataset=dataset, number=n) for n in numbers
    )
    diff = selectors.dataset_version_diff(user=request.user, old=old, new=new)
    context = {
        "squad": squad_obj,
        "dataset": dataset,
        "diff": diff,
        "added": [{"index": a["index"], "text": _json(a["row"])} for a in diff.added],
        "removed": [{"index": r["index"], "text": _json(r["row"])} for r in diff.removed],
    }
    return render(request, partial_template(request, "finetune/diff.html", "diff"), context)


@login_required
@require_GET
def version_download(request: HttpRequest, squad: str, slug: str, number: int) -> FileResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    dataset = selectors.dataset_get_for_user(user=request.user, squad=squad_obj, slug=slug)
    version = selectors.dataset_version_get(user=request.user, dataset=dataset, number=number)
    return FileResponse(
        open(version.path, "rb"),  # FileResponse closes it
        as_attachment=True,
        filename=f"{dataset.slug}-v{number}.jsonl",
        content_type="application/jsonl",
    )


@login_required
@require_GET
def dataset_sample(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    """A sample JSONL file in the dataset's format whose rows pass the upload checks."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    dataset = selectors.dataset_get_for_user(user=request.user, squad=squad_obj, slug=slug)
    sample = rows.sample_rows(dataset.format, dataset.prompt_version)
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in sample)
    response = HttpResponse(body, content_type="application/jsonl")
    response["Content-Disposition"] = f'attachment; filename="{dataset.slug}-sample.jsonl"'
    return response
