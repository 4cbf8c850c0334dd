"""HTML pages for evaluation: a prompt's test cases (add, edit, delete, JSONL import and
export, start a run), a run's live progress and results, and the comparison of two runs.
Each view parses the request, calls one evals service or selector (the same ones the API
calls) and renders; an ApplicationError renders inline with its status code."""

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.core.http import parse_id
from apps.core.validation import parse_json
from apps.evals import selectors, services
from apps.evals.models import EvalRun, TestCase
from apps.generation.selectors import model_target_list_for_user
from apps.prompts import selectors as prompt_selectors
from apps.prompts.models import PromptTemplate
from apps.squads.access import has_squad_permission
from apps.squads.permissions import RUN_EVALS, WRITE_TEST_CASES
from apps.squads.selectors import squad_get_for_user

RUNS_LISTED = 50
RESULTS_PER_PAGE = 100


def _template(request: HttpRequest, squad: str, slug: str) -> PromptTemplate:
    return prompt_selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )


def _json_field(raw: str, field: str, label: str) -> Any:
    return parse_json(raw or "", field=field, label=label)


def _tags(raw: str) -> list[str]:
    return [t.strip() for t in (raw or "").split(",") if t.strip()]


def _case_form(case: TestCase | None) -> dict[str, str]:
    if case is None:
        return {
            "name": "",
            "variables": "{}",
            "assertions": '[{"type": "contains", "value": ""}]',
            "tags": "",
        }
    return {
        "name": case.name,
        "variables": json.dumps(case.variables, indent=2, ensure_ascii=False),
        "assertions": json.dumps(case.assertions, indent=2, ensure_ascii=False),
        "tags": ", ".join(case.tags),
    }


def _cases_context(request: HttpRequest, template: PromptTemplate, **extra: Any) -> dict[str, Any]:
    squad, user = template.squad, request.user
    cases = list(selectors.test_case_list_for_user(user=user, template=template))
    for case in cases:
        case.variables_json = json.dumps(case.variables, ensure_ascii=False)
    runs = list(
        selectors.eval_run_list_for_user(user=user, squad=squad, template=template)[:RUNS_LISTED]
    )
    return {
        "squad": squad,
        "template": template,
        "cases": cases,
        "runs": runs,
        "finished_runs": [r for r in runs if r.finished],
        "versions": prompt_selectors.prompt_version_list(user=user, template=template),
        "targets": model_target_list_for_user(user=user, squad=squad),
        "tags": sorted({t for c in cases for t in c.tags}),
        "can_write": has_squad_permission(user, squad, WRITE_TEST_CASES),
        "can_run": has_squad_permission(user, squad, RUN_EVALS),
        "form": _case_form(None),
        "run_version": parse_id(request.GET.get("version")),
        **extra,
    }


def _posted_case(request: HttpRequest) -> dict[str, str]:
    return {k: request.POST.get(k, "") for k in ("name", "variables", "assertions", "tags")}


def _case_fields(form: dict[str, str]) -> dict[str, Any]:
    """The case form's fields as the services take them (JSON errors name the field)."""
    return {
        "name": form["name"],
        "variables": _json_field(form["variables"], "variables", "Variables"),
        "assertions": _json_field(form["assertions"], "assertions", "Assertions"),
        "tags": _tags(form["tags"]),
    }


@login_required
@require_GET
def index(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's evals: each prompt with its test cases, and the latest runs."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    context = {
        "squad": squad_obj,
        "prompts": selectors.prompt_case_counts_for_user(user=request.user, squad=squad_obj),
        "runs": selectors.eval_run_list_for_user(user=request.user, squad=squad_obj).order_by(
            "-pk"
        )[:RUNS_LISTED],
        "runs_listed": RUNS_LISTED,
    }
    return render(request, "evals/index.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def cases(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    """The prompt's test cases and eval runs; POST adds a case."""
    template = _template(request, squad, slug)
    if request.method == "GET":
        return render(request, "evals/cases.html", _cases_context(request, template))
    form = _posted_case(request)
    try:
        services.test_case_create(
            actor=request.user, template=template, **_case_fields(form), request=request
        )
    except ApplicationError as exc:
        context = _cases_context(request, template, form=form, case_error=exc)
        page = "evals/cases.html#case-form" if request.htmx else "evals/cases.html"
        return render(request, page, context, status=exc.status_code)
    return redirect("evals:cases", squad=squad, slug=slug)


@login_required
@require_http_methods(["GET", "POST"])
def case_edit(request: HttpRequest, squad: str, slug: str, case_id: int) -> HttpResponse:
    template = _template(request, squad, slug)
    case = selectors.test_case_get_for_user(user=request.user, template=template, case_id=case_id)
    context: dict[str, Any] = {
        "squad": template.squad,
        "template": template,
        "case": case,
        "form": _case_form(case),
        "can_write": has_squad_permission(request.user, template.squad, WRITE_TEST_CASES),
    }
    if request.method == "GET":
        return render(request, "evals/case_edit.html", context)
    form = _posted_case(request)
    try:
        services.test_case_update(
            actor=request.user, case=case, **_case_fields(form), request=request
        )
    except ApplicationError as exc:
        context.update(form=form, case_error=exc)
        return render(request, "evals/case_edit.html", context, status=exc.status_code)
    return redirect("evals:cases", squad=squad, slug=slug)


@login_required
@require_POST
def case_delete(request: HttpRequest, squad: str, slug: str, case_id: int) -> HttpResponse:
    template = _template(request, squad, slug)
    case = selectors.test_case_get_for_user(user=request.user, template=template, case_id=case_id)
    try:
        services.test_case_delete(actor=request.user, case=case, request=request)
    except ApplicationError as exc:
        context = _cases_context(request, template, list_error=exc)
        return render(request, "evals/cases.html", context, status=exc.status_code)
    if request.htmx:
        return HttpResponse("")  # the row is swapped out
    return redirect("evals:cases", squad=squad, slug=slug)


@login_required
@require_POST
def case_import(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    template = _template(request, squad, slug)
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise ValidationFailed("Choose a .jsonl file to import.", field="file")
        result = services.test_cases_import(
            actor=request.user,
            template=template,
            content=upload.read(services.MAX_IMPORT_BYTES + 1),
            filename=upload.name or "",
            request=request,
        )
    except ApplicationError as exc:
        context = _cases_context(request, template, import_error=exc)
        page = "evals/cases.html#import-form" if request.htmx else "evals/cases.html"
        return render(request, page, context, status=exc.status_code)
    context = _cases_context(request, template, imported=result)
    return render(request, "evals/cases.html", context)


@login_required
@require_GET
def case_export(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    template = _template(request, squad, slug)
    found = selectors.test_case_list_for_user(user=request.user, template=template)
    response = HttpResponse(services.test_cases_export(list(found)), "application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="{template.slug}-cases.jsonl"'
    return response


@login_required
@require_POST
def run_start(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    template = _template(request, squad, slug)
    try:
        number = parse_id(request.POST.get("version"))
        if number is None:
            raise ValidationFailed("Choose a version to evaluate.", field="version")
        version = prompt_selectors.prompt_version_get(
            user=request.user, template=template, number=number
        )
        run = services.eval_run_create(
            actor=request.user,
            version=version,
            target_name=request.POST.get("target", "").strip() or None,
            tags=_tags(request.POST.get("tags", "")),
            request=request,
        )
    except ApplicationError as exc:
        context = _cases_context(request, template, run_error=exc)
        return render(request, "evals/cases.html", context, status=exc.status_code)
    return redirect("evals:run", squad=squad, run_id=run.pk)


def _run_context(request: HttpRequest, run: EvalRun, **extra: Any) -> dict[str, Any]:
    return {
        "squad": run.squad,
        "run": run,
        "template": run.version.template,
        "can_run": has_squad_permission(request.user, run.squad, RUN_EVALS),
        **extra,
    }


@login_required
@require_GET
def run_detail(request: HttpRequest, squad: str, run_id: int) -> HttpResponse:
    """Progress (polled while the run is on a worker) and the results, failing first on
    request (?failing=1)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    run = selectors.eval_run_get_for_user(user=request.user, squad=squad_obj, run_id=run_id)
    context = _run_context(request, run)
    target = request.htmx.target if request.htmx else None
    if target == "progress":
        response = render(request, "evals/run.html#progress", context)
        return trigger_client_event(response, "eval-finished") if run.finished else response
    failing = request.GET.get("failing") == "1"
    results = selectors.eval_results(run=run, failing_only=failing)
    page = Paginator(results, RESULTS_PER_PAGE).get_page(request.GET.get("page"))
    results = list(page.object_list)
    for result in results:
        result.variables_json = json.dumps(result.variables, ensure_ascii=False)
    context.update(page=page, results=results, failing=failing)
    template_name = "evals/run.html#results" if target == "results" else "evals/run.html"
    return render(request, template_name, context)


@login_required
@require_POST
def run_cancel(request: HttpRequest, squad: str, run_id: int) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    run = selectors.eval_run_get_for_user(user=request.user, squad=squad_obj, run_id=run_id)
    try:
        run = services.eval_run_cancel(actor=request.user, run=run, request=request)
    except ApplicationError as exc:
        if not request.htmx:
            raise
        context = _run_context(request, run, cancel_error=exc)
        return render(request, "evals/run.html#progress", context, status=exc.status_code)
    if not request.htmx:
        return redirect("evals:run", squad=squad, run_id=run.pk)
    run = selectors.eval_run_get_for_user(user=request.user, squad=squad_obj, run_id=run_id)
    return render(request, "evals/run.html#progress", _run_context(request, run))


@login_required
@require_GET
def compare(request: HttpRequest, squad: str) -> HttpResponse:
    """Two runs of one prompt case by case (?base=<run>&head=<run>)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    base, head = parse_id(request.GET.get("base")), parse_id(request.GET.get("head"))
    if base is None or head is None:
        raise ValidationFailed("Choose two runs to compare (?base=<run>&head=<run>).", field="base")
    comparison = selectors.compare_runs(
        user=request.user, squad=squad_obj, base_id=base, head_id=head
    )
    context = {
        "squad": squad_obj,
        "template": comparison.head.version.template,
        "c": comparison,
    }
    return render(request, "evals/compare.html", context)
