from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja import File, Query, Router, Schema, Status
from ninja.files import UploadedFile

from apps.core.exceptions import NotFound, ValidationFailed
from apps.core.fairshare import QueuePositions, queue_out
from apps.evals import selectors, services
from apps.evals.models import EvalResult, EvalRun, TestCase
from apps.evals.schemas import (
    CompareOut,
    EvalRunDetailOut,
    EvalRunIn,
    EvalRunOut,
    ImportOut,
    TestCaseIn,
    TestCaseOut,
    TestCaseUpdateIn,
)
from apps.prompts import selectors as prompt_selectors
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["evals"])
MAX_LISTED = 200


def case_out(case: TestCase) -> dict[str, Any]:
    return {
        "id": case.pk,
        "name": case.name,
        "variables": case.variables,
        "assertions": case.assertions,
        "tags": case.tags,
        "created_by": case.created_by.get_username() if case.created_by else None,
        "created_at": case.created_at,
        "updated_at": case.updated_at,
    }


def run_out(run: EvalRun, positions: QueuePositions | None = None) -> dict[str, Any]:
    return {
        "id": run.pk,
        "prompt": run.version.template.slug,
        "version": run.version.number,
        "version_id": run.version_id,
        "target": run.target.name,
        "tags": run.tags,
        "status": run.status,
        "total": run.total,
        "done": run.done,
        "passed": run.passed,
        "failed": run.failed_count,
        "pass_rate": run.pass_rate,
        "error": run.error,
        "queue": queue_out(run, positions),
        "created_by": run.created_by.get_username() if run.created_by else None,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "url": reverse("evals:run", args=[run.squad.slug, run.pk]),
    }


def result_out(result: EvalResult) -> dict[str, Any]:
    return {
        "case": result.case_id,
        "name": result.case_name,
        "passed": result.passed,
        "assertions": result.assertion_results,
        "output": result.output,
        "generation": result.generation_id,
        "generation_status": result.generation_status,
        "latency_ms": result.latency_ms,
        "output_tokens": result.output_tokens,
    }


def _row_out(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("case", "name", "base_passed", "head_passed", "failing")}


def _template(request: HttpRequest, squad: str, slug: str) -> PromptTemplate:
    return prompt_selectors.prompt_template_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug
    )


def _case(request: HttpRequest, squad: str, slug: str, case_id: int) -> TestCase:
    template = _template(request, squad, slug)
    return selectors.test_case_get_for_user(user=request.auth, template=template, case_id=case_id)


class CasesQuery(Schema):
    tag: list[str] = []


@router.get("/squads/{squad}/prompts/{slug}/cases", response=list[TestCaseOut])
def case_list(request: HttpRequest, squad: str, slug: str, q: Query[CasesQuery]) -> list:
    template = _template(request, squad, slug)
    cases = selectors.test_case_list_for_user(user=request.auth, template=template, tags=q.tag)
    return [case_out(c) for c in cases]


@router.post("/squads/{squad}/prompts/{slug}/cases", response={201: TestCaseOut})
def case_create(request: HttpRequest, squad: str, slug: str, payload: TestCaseIn) -> Status:
    case = services.test_case_create(
        actor=request.auth,
        template=_template(request, squad, slug),
        name=payload.name,
        variables=payload.variables,
        assertions=payload.assertions,
        tags=payload.tags,
        request=request,
    )
    return Status(201, case_out(case))


@router.post("/squads/{squad}/prompts/{slug}/cases/import", response=ImportOut)
def case_import(request: HttpRequest, squad: str, slug: str, file: File[UploadedFile]) -> dict:
    """JSONL, one case per line: {"name", "variables", "assertions", "tags"}. A case whose
    name exists is replaced. Any bad line refuses the file with 422 and `errors: [{line,
    field, message}]` (the first 100); nothing is stored."""
    result = services.test_cases_import(
        actor=request.auth,
        template=_template(request, squad, slug),
        content=file.read(services.MAX_IMPORT_BYTES + 1),
        filename=file.name or "",
        request=request,
    )
    return {"created": result.created, "updated": result.updated, "unchanged": result.unchanged}


@router.get("/squads/{squad}/prompts/{slug}/cases/export", response={200: None})
def case_export(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    """The cases as JSONL, in the import format."""
    template = _template(request, squad, slug)
    cases = selectors.test_case_list_for_user(user=request.auth, template=template)
    response = HttpResponse(services.test_cases_export(list(cases)), "application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="{template.slug}-cases.jsonl"'
    return response


@router.get("/squads/{squad}/prompts/{slug}/cases/{case_id}", response=TestCaseOut)
def case_detail(request: HttpRequest, squad: str, slug: str, case_id: int) -> dict:
    return case_out(_case(request, squad, slug, case_id))


@router.patch("/squads/{squad}/prompts/{slug}/cases/{case_id}", response=TestCaseOut)
def case_update(
    request: HttpRequest, squad: str, slug: str, case_id: int, payload: TestCaseUpdateIn
) -> dict:
    case = services.test_case_update(
        actor=request.auth,
        case=_case(request, squad, slug, case_id),
        request=request,
        **payload.dict(),
    )
    return case_out(case)


@router.delete("/squads/{squad}/prompts/{slug}/cases/{case_id}", response={204: None})
def case_delete(request: HttpRequest, squad: str, slug: str, case_id: int) -> Status:
    services.test_case_delete(
        actor=request.auth, case=_case(request, squad, slug, case_id), request=request
    )
    return Status(204, None)


def _version(request: HttpRequest, squad: str, payload: EvalRunIn) -> PromptVersion:
    """By id, or by prompt slug and number (the latest version without a number)."""
    if payload.version_id is not None:
        found = (
            PromptVersion.objects.select_related("template__squad")
            .filter(pk=payload.version_id, template__squad__slug=squad)
            .first()
        )
        if found is None:
            raise NotFound(f"Prompt version {payload.version_id} not found.", field="version_id")
        prompt_selectors.prompt_version_get(
            user=request.auth, template=found.template, number=found.number
        )
        return found
    if not payload.prompt:
        raise ValidationFailed("Give 'prompt' (and 'version'), or 'version_id'.", field="prompt")
    template = _template(request, squad, payload.prompt)
    if payload.version is None:
        if template.latest_version is None:
            raise NotFound(f"Prompt '{template.slug}' has no version yet.", field="version")
        return template.latest_version
    return prompt_selectors.prompt_version_get(
        user=request.auth, template=template, number=payload.version
    )


@router.post("/squads/{squad}/evals", response={201: EvalRunOut})
def run_create(request: HttpRequest, squad: str, payload: EvalRunIn) -> Status:
    """Queue an eval run of a version (by `version_id`, or `prompt` + `version` number) on
    a model target (the version's own by default) over its prompt's cases, or those with
    one of `tags`."""
    squad_get_for_user(user=request.auth, slug=squad)
    run = services.eval_run_create(
        actor=request.auth,
        version=_version(request, squad, payload),
        target_name=payload.target,
        tags=payload.tags,
        batch_size=payload.batch_size,
        request=request,
    )
    return Status(201, run_out(run))


class RunsQuery(Schema):
    prompt: str | None = None


@router.get("/squads/{squad}/evals", response=list[EvalRunOut])
def run_list(request: HttpRequest, squad: str, q: Query[RunsQuery]) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    template = _template(request, squad, q.prompt) if q.prompt else None
    runs = selectors.eval_run_list_for_user(user=request.auth, squad=squad_obj, template=template)
    positions = QueuePositions()
    return [run_out(r, positions) for r in runs[:MAX_LISTED]]


class CompareQuery(Schema):
    base: int
    head: int


@router.get("/squads/{squad}/evals/compare", response=CompareOut)
def run_compare(request: HttpRequest, squad: str, q: Query[CompareQuery]) -> dict:
    """Case by case: regressions (passed in `base`, fail in `head`), fixes, unchanged."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    c = selectors.compare_runs(user=request.auth, squad=squad_obj, base_id=q.base, head_id=q.head)
    return {
        "base": run_out(c.base),
        "head": run_out(c.head),
        "pass_rate_delta": c.pass_rate_delta,
        "regressions": [_row_out(r) for r in c.regressions],
        "fixes": [_row_out(r) for r in c.fixes],
        "unchanged": [_row_out(r) for r in c.unchanged],
        "only_base": [_row_out(r) for r in c.only_base],
        "only_head": [_row_out(r) for r in c.only_head],
    }


@router.get("/squads/{squad}/evals/{run_id}", response=EvalRunDetailOut)
def run_detail(request: HttpRequest, squad: str, run_id: int) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    run = selectors.eval_run_get_for_user(user=request.auth, squad=squad_obj, run_id=run_id)
    return {**run_out(run), "results": [result_out(r) for r in selectors.eval_results(run=run)]}


@router.post("/squads/{squad}/evals/{run_id}/cancel", response=EvalRunOut)
def run_cancel(request: HttpRequest, squad: str, run_id: int) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    run = selectors.eval_run_get_for_user(user=request.auth, squad=squad_obj, run_id=run_id)
    return run_out(services.eval_run_cancel(actor=request.auth, run=run, request=request))
