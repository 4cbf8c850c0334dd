"""HTML views for generation: the playground's run panel, a generation's live result, and
batch jobs (list and upload, live progress, results, cancel, export). Each view parses the
request, calls the generation services/selectors (the same ones the API calls) and renders
a page, or one of its partials when htmx asks."""

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.core.http import parse_id
from apps.core.validation import parse_json
from apps.core.views import form_error, parse_int, partial_template
from apps.generation import exports, selectors, services
from apps.generation.api import resolve_version
from apps.generation.models import BatchJob, Generation, ModelTarget
from apps.prompts import selectors as prompt_selectors
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.prompts.variables import example_variables, variable_fields
from apps.squads.access import has_squad_permission, require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import RUN_GENERATION
from apps.squads.selectors import squad_get_for_user

PAGE_SIZE = 50
RESULT_FILTERS = (
    Generation.Status.OK,
    Generation.Status.INVALID,
    Generation.Status.FAILED,
    Generation.Status.BLOCKED,
)
BATCH_FIELDS = ("prompt", "version", "target", "batch_size")
# The batch job page polls these partials; htmx names them in HX-Target.
JOB_PARTIALS = ("progress", "results")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _error_rows(exc: ApplicationError | None) -> list[dict[str, Any]]:
    """Every problem of an error with where it is ({path, message} or {row, path, message})."""
    if exc is None:
        return []
    if isinstance(exc.extra, list) and all(isinstance(e, dict) for e in exc.extra):
        return exc.extra
    return [{"path": exc.field or "", "message": exc.message}]


def _targets(user: Any, squad: Squad) -> list[ModelTarget]:
    """Enabled targets by name; a squad's own target hides the global one of that name
    (that is the one a run by name gets)."""
    by_name: dict[str, ModelTarget] = {}
    for target in selectors.model_target_list_for_user(user=user, squad=squad):
        if target.enabled and (target.name not in by_name or target.squad_id is not None):
            by_name[target.name] = target
    return list(by_name.values())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# --- playground -------------------------------------------------------------------------


def _run_form(data: QueryDict, version: PromptVersion | None) -> dict[str, str]:
    """What the panel shows: the submitted text, else the version's defaults."""
    variables = data.get("variables")
    if variables is None:
        variables = _pretty(example_variables(version.input_schema).value) if version else "{}"
    return {
        "version": str(version.number) if version else "",
        "target": data.get("target", "").strip(),
        "variables": variables.replace("\r\n", "\n"),
    }


def _run_version(user: Any, template: PromptTemplate, raw: str | None) -> PromptVersion | None:
    number = parse_int(raw or "", field="version", label="Version")
    if number is None:
        return template.latest_version
    return prompt_selectors.prompt_version_get(user=user, template=template, number=number)


def _run_variables(raw: str) -> dict[str, Any]:
    variables = parse_json(raw or "{}", field="variables", label="Variables")
    if not isinstance(variables, dict):
        raise ValidationFailed(
            'Variables must be a JSON object, like {"name": "Ada"}.', field="variables"
        )
    return variables


def _panel_context(
    request: HttpRequest,
    template: PromptTemplate,
    version: PromptVersion | None,
    form: dict[str, str],
    *,
    generation: Generation | None = None,
    error: ApplicationError | None = None,
) -> dict[str, Any]:
    squad = template.squad
    targets = _targets(request.user, squad)
    # Preselected: the chosen target, else the version's own.
    target = form["target"] or (version.model_settings["target"] if version else "")
    return {
        "squad": squad,
        "template": template,
        "version": version,
        "versions": list(
            prompt_selectors.prompt_version_list(user=request.user, template=template)
        ),
        "targets": targets,
        "selected_target": target,
        "selected_target_known": any(t.name == target for t in targets),
        "form": form,
        "error": error,
        "error_rows": _error_rows(error),
        "generation": generation,
        **(_generation_display(generation) if generation else {}),
        "variable_fields": variable_fields(version.input_schema, _json_object(form["variables"]))
        if version
        else [],
    }


def _json_object(raw: str) -> dict[str, Any]:
    """The variables as typed when they are a JSON object, else {} (the form then starts
    empty; the JSON box keeps the text and the server names the problem on Run)."""
    try:
        value = parse_json(raw or "{}", field="variables")
    except ValidationFailed:
        return {}
    return value if isinstance(value, dict) else {}


@login_required
@require_http_methods(["GET", "POST"])
def playground(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    """The run panel of a prompt (the template page loads it with htmx) and its Run."""
    template = prompt_selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )
    if not has_squad_permission(request.user, template.squad, RUN_GENERATION):
        if request.htmx and request.method == "GET":
            return HttpResponse("")  # the template page asks every visitor; show nothing
        require_squad_permission(request.user, template.squad, RUN_GENERATION)
    page = partial_template(request, "generation/playground.html", "run-panel")
    data = request.POST if request.method == "POST" else request.GET
    try:
        version = _run_version(request.user, template, data.get("version"))
    except ApplicationError as exc:
        version = template.latest_version
        context = _panel_context(request, template, version, _run_form(data, version), error=exc)
        return render(request, page, context, status=exc.status_code)
    form = _run_form(data, version)
    if request.method == "GET" or version is None:
        return render(request, page, _panel_context(request, template, version, form))
    generation = error = None
    try:
        generation = services.generation_request(
            actor=request.user,
            version=version,
            variables=_run_variables(form["variables"]),
            source=Generation.Source.PLAYGROUND,
            target_name=form["target"] or None,
            request=request,
        )
    except ApplicationError as exc:
        error = form_error(exc)
    context = _panel_context(request, template, version, form, generation=generation, error=error)
    return render(request, page, context, status=error.status_code if error else 200)


def _generation_display(generation: Generation) -> dict[str, Any]:
    return {
        "output_json_pretty": (
            _pretty(generation.output_json) if generation.output_json is not None else ""
        ),
        "variables_pretty": _pretty(generation.variables),
        "provenance_pretty": _pretty(generation.provenance) if generation.provenance else "",
    }


GENERATION_FILTERS = ("prompt", "version", "target", "source", "status", "flagged")


@login_required
@require_GET
def generation_list(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's generations, newest first, filtered by prompt, version, target, source,
    status and flagged; PAGE_SIZE a page, the next page starting below the last id shown
    (?before=<id>), so a page costs the same on a squad with millions of rows."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    form = {name: request.GET.get(name, "").strip() for name in GENERATION_FILTERS}
    rows: list[Generation] = []
    error = None
    before = parse_id(request.GET.get("before"))
    try:
        filters = selectors.GenerationFilter(
            prompt=form["prompt"] or None,
            version=parse_int(form["version"], field="version", label="Version", minimum=1),
            target=form["target"] or None,
            source=form["source"] or None,
            status=form["status"] or None,
            flagged={"": None, "yes": True, "no": False}.get(form["flagged"], form["flagged"]),
        )
        if isinstance(filters.flagged, str):
            raise ValidationFailed(
                f"Flagged must be 'yes', 'no' or empty (got '{form['flagged']}').", field="flagged"
            )
        found = selectors.generation_list_for_user(
            user=request.user, squad=squad_obj, filters=filters
        )
        if before is not None:
            found = found.filter(pk__lt=before)
        rows = list(found[: PAGE_SIZE + 1])
    except ApplicationError as exc:
        error = form_error(exc)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    query = {k: v for k, v in form.items() if v}
    context = {
        "squad": squad_obj,
        "rows": rows,
        "form": form,
        "error": error,
        "prompts": prompt_selectors.prompt_template_list_for_user(
            user=request.user, squad=squad_obj
        ),
        "targets": selectors.model_target_list_for_user(user=request.user, squad=squad_obj),
        "sources": Generation.Source.values,
        "statuses": Generation.Status.values,
        "next_query": urlencode(query | {"before": rows[-1].pk}) if more else "",
        "first_query": urlencode(query) if before is not None else None,
    }
    return render(
        request,
        "generation/generation_list.html",
        context,
        status=error.status_code if error else 200,
    )


@login_required
@require_GET
def generation_detail(request: HttpRequest, squad: str, generation_id: int) -> HttpResponse:
    """One generation; while it is queued or running its partial polls itself."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    generation = selectors.generation_get_for_user(
        user=request.user, squad=squad_obj, generation_id=generation_id
    )
    context = {"squad": squad_obj, "generation": generation, **_generation_display(generation)}
    return render(
        request, partial_template(request, "generation/generation.html", "generation"), context
    )


# --- batch jobs -------------------------------------------------------------------------


def _batch_form_context(
    request: HttpRequest,
    squad: Squad,
    form: dict[str, str],
    error: ApplicationError | None = None,
) -> dict[str, Any]:
    can_run = has_squad_permission(request.user, squad, RUN_GENERATION)
    jobs = Paginator(
        selectors.batch_job_list_for_user(user=request.user, squad=squad), PAGE_SIZE
    ).get_page(request.GET.get("page"))
    context: dict[str, Any] = {
        "squad": squad,
        "jobs": jobs,
        "can_run": can_run,
        "form": form,
        "error": error,
        "error_rows": _error_rows(error),
    }
    if can_run:
        context["prompts"] = prompt_selectors.prompt_template_list_for_user(
            user=request.user, squad=squad
        )
        context["targets"] = _targets(request.user, squad)
        context["columns_version"] = _columns_version(request, squad, form)
        if context["columns_version"] is not None:
            schema = context["columns_version"].input_schema
            context["columns"] = variable_fields(schema, {})
            context["sample_cut"] = example_variables(schema).cut
    return context


def _columns_version(
    request: HttpRequest, squad: Squad, form: dict[str, str]
) -> PromptVersion | None:
    """The version whose input schema the file's columns follow: the chosen prompt's
    version by number or label, else its latest (None while none is chosen or found)."""
    if not form.get("prompt"):
        return None
    try:
        template = prompt_selectors.prompt_template_get_for_user(
            user=request.user, squad_slug=squad.slug, slug=form["prompt"]
        )
        raw = form.get("version", "").strip()
        number = parse_id(raw)
        label = raw if raw and number is None and raw != "latest" else None
        return resolve_version(request.user, template, label=label, version=number)
    except ApplicationError:
        return None


def _batch_create(request: HttpRequest, squad: Squad, form: dict[str, str]) -> BatchJob:
    if not form["prompt"]:
        raise ValidationFailed("Choose the prompt to run.", field="prompt")
    template = prompt_selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad.slug, slug=form["prompt"]
    )
    # One field for both: digits name a version number, anything else a label.
    choice = form["version"]
    version = resolve_version(
        request.user,
        template,
        label=choice if choice and parse_id(choice) is None else None,
        version=parse_id(choice),
    )
    batch_size = parse_int(form["batch_size"], field="batch_size", label="Batch size")
    upload = request.FILES.get("file")
    if upload is None:
        raise ValidationFailed("Choose a .jsonl or .csv file of variables.", field="file")
    return services.batch_job_create(
        actor=request.user,
        version=version,
        content=upload.read(services.MAX_UPLOAD_BYTES + 1),
        filename=upload.name or "",
        target_name=form["target"] or None,
        batch_size=32 if batch_size is None else batch_size,
        request=request,
    )


@login_required
@require_http_methods(["GET", "POST"])
def batch_list(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's batch jobs and, for those who may run them, the upload form."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    if request.method == "GET":
        form = {
            "prompt": request.GET.get("prompt", ""),
            "version": request.GET.get("version", ""),
            "target": "",
        }
        context = _batch_form_context(request, squad_obj, {**form, "batch_size": "32"})
        return render(request, "generation/batch_list.html", context)
    form = {name: request.POST.get(name, "").strip() for name in BATCH_FIELDS}
    try:
        job = _batch_create(request, squad_obj, form)
    except ApplicationError as exc:
        context = _batch_form_context(request, squad_obj, form, form_error(exc))
        return render(request, "generation/batch_list.html", context, status=exc.status_code)
    return redirect("generation:batch_detail", squad=squad, job_id=job.pk)


def _status_filter(raw: str | None) -> str | None:
    if not raw:
        return None
    if raw not in RESULT_FILTERS:
        raise ValidationFailed(
            f"Unknown status '{raw}'; use one of {', '.join(RESULT_FILTERS)}.", field="status"
        )
    return raw


def _progress_context(request: HttpRequest, squad: Squad, job: BatchJob) -> dict[str, Any]:
    return {
        "squad": squad,
        "job": job,
        "percent": job.rows_done * 100 // job.rows_total if job.rows_total else 0,
        "eta": _duration(job.eta_seconds),
        "can_run": has_squad_permission(request.user, squad, RUN_GENERATION),
    }


def _results_context(request: HttpRequest, job: BatchJob) -> dict[str, Any]:
    status = _status_filter(request.GET.get("status"))
    every = selectors.batch_results(user=request.user, job=job)
    counts = dict(every.order_by().values_list("status").annotate(n=Count("pk")))
    results = selectors.batch_results(user=request.user, job=job, status=status)
    page = Paginator(results, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {
            "generation": g,
            "variables": json.dumps(g.variables, ensure_ascii=False),
            "output_json": _pretty(g.output_json) if g.output_json is not None else "",
        }
        for g in page
    ]
    filters = [("", "All", sum(counts.values()))]
    filters += [(s.value, s.value, counts.get(s.value, 0)) for s in RESULT_FILTERS]
    return {"status": status or "", "filters": filters, "page": page, "rows": rows}


def _announce_finished(response: HttpResponse, job: BatchJob) -> HttpResponse:
    """A finished job's progress answer tells the page to reload its results once."""
    return trigger_client_event(response, "batch-finished") if job.finished else response


@login_required
@require_GET
def batch_detail(request: HttpRequest, squad: str, job_id: int) -> HttpResponse:
    """Progress (polled while the job runs on a worker) and the results, filtered and paged."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    job = selectors.batch_job_get_for_user(user=request.user, squad=squad_obj, job_id=job_id)
    context = _progress_context(request, squad_obj, job)
    target = request.htmx.target if request.htmx else None
    if target == "progress":
        response = render(request, "generation/batch_detail.html#progress", context)
        return _announce_finished(response, job)
    context.update(_results_context(request, job))
    page = "generation/batch_detail.html"
    if target == "results":
        page = partial_template(request, page, "results")
    return render(request, page, context)


@login_required
@require_POST
def batch_cancel(request: HttpRequest, squad: str, job_id: int) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    job = selectors.batch_job_get_for_user(user=request.user, squad=squad_obj, job_id=job_id)
    try:
        job = services.batch_job_cancel(actor=request.user, job=job, request=request)
    except ApplicationError as exc:
        if not request.htmx:
            raise
        context = {**_progress_context(request, squad_obj, job), "cancel_error": form_error(exc)}
        return render(
            request, "generation/batch_detail.html#progress", context, status=exc.status_code
        )
    if not request.htmx:
        return redirect("generation:batch_detail", squad=squad, job_id=job.pk)
    context = _progress_context(request, squad_obj, job)
    response = render(request, "generation/batch_detail.html#progress", context)
    return _announce_finished(response, job)


@login_required
@require_GET
def batch_export(request: HttpRequest, squad: str, job_id: str, fmt: str) -> StreamingHttpResponse:
    """The job's results as JSONL or CSV, streamed; ?status= filters like the page."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    job = selectors.batch_job_get_for_user(user=request.user, squad=squad_obj, job_id=int(job_id))
    results = selectors.batch_results(
        user=request.user, job=job, status=_status_filter(request.GET.get("status"))
    )
    return exports.streaming_response(results, exports.ResultFormat(fmt), name=f"batch-{job.pk}")
