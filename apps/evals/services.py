"""Evaluation writes: test cases (one at a time or a JSONL import, all-or-nothing) and
eval runs (queued on the gpu queue, executed by `eval_run_execute` through the same
generation path as batch jobs, so governance, output contracts and provenance apply).
"""

import json
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core import jobs, queues
from apps.core.exceptions import Conflict, NotFound, ValidationFailed
from apps.core.validation import parse_json
from apps.evals import assertions as checks
from apps.evals.models import NAME_MAX, EvalResult, EvalRun, TestCase
from apps.evals.selectors import cases_with_tags
from apps.generation import pipeline
from apps.generation.models import Generation, ModelTarget
from apps.generation.targets import target_resolve
from apps.governance.models import PolicyVersion
from apps.governance.selectors import policy_version_current, rules_of
from apps.prompts.contracts import validate_variables
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.squads.access import require_squad_permission
from apps.squads.permissions import RUN_EVALS, WRITE_TEST_CASES
from apps.telemetry.recording import bind_generation, generations_finished

User = AbstractBaseUser
MAX_TAGS = 20
TAG_MAX = 50
MAX_IMPORT_BYTES = 10 * 1024 * 1024
MAX_IMPORT_LINES = 10_000
MAX_REPORTED_ERRORS = 100
CASE_KEYS = ("name", "variables", "assertions", "tags")
JUDGE_MAX_TOKENS = 16


# --- test cases --------------------------------------------------------------------------


def _clean_name(raw: Any) -> str:
    name = raw.strip() if isinstance(raw, str) else ""
    if not name:
        raise ValidationFailed("name must be a non-empty string.", field="name")
    if len(name) > NAME_MAX:
        raise ValidationFailed(
            f"name is {len(name)} characters long; the limit is {NAME_MAX}.", field="name"
        )
    return name


def clean_tags(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise ValidationFailed("tags must be a list of strings.", field="tags")
    tags = sorted({t.strip() for t in raw if t.strip()})
    if len(tags) > MAX_TAGS:
        raise ValidationFailed(f"{len(tags)} tags; the limit is {MAX_TAGS}.", field="tags")
    for tag in tags:
        if len(tag) > TAG_MAX:
            raise ValidationFailed(
                f"tag '{tag[:20]}…' is longer than {TAG_MAX} characters.", field="tags"
            )
    return tags


def _clean_variables(template: PromptTemplate, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValidationFailed("variables must be a JSON object.", field="variables")
    try:  # Python's json reads NaN and Infinity; JSON columns refuse them
        json.dumps(raw, allow_nan=False)
    except ValueError:
        raise ValidationFailed(
            "variables contain NaN or Infinity, which JSON does not allow.", field="variables"
        ) from None
    version = template.latest_version
    errors = validate_variables(version.input_schema, raw) if version else []
    if errors:
        first = errors[0]
        raise ValidationFailed(
            f"variables {first['path']}: {first['message']} (input schema of version "
            f"{version.number})",
            field=f"variables{first['path'][1:]}" if first["path"] != "$" else "variables",
            extra=errors,
        )
    return raw


def _clean_judges(template: PromptTemplate, cleaned: list[dict[str, Any]]) -> None:
    for index, name in checks.judge_targets(cleaned):
        try:
            target_resolve(squad_id=template.squad_id, name=name)
        except NotFound as exc:
            raise ValidationFailed(
                f"assertions[{index}].target: {exc.message}", field=f"assertions[{index}].target"
            ) from exc


def _clean_case(template: PromptTemplate, data: dict[str, Any]) -> dict[str, Any]:
    """Every field of a case, checked; the first problem raises, naming its field."""
    cleaned = {
        "name": _clean_name(data.get("name")),
        "variables": _clean_variables(template, data.get("variables")),
        "assertions": checks.clean_assertions(data.get("assertions", [])),
        "tags": clean_tags(data.get("tags")),
    }
    _clean_judges(template, cleaned["assertions"])
    return cleaned


def _name_taken(template: PromptTemplate, name: str, but: TestCase | None = None) -> bool:
    """After an IntegrityError: was it the unique name (a concurrent request took it)?"""
    cases = TestCase.objects.filter(template=template, name=name)
    return cases.exclude(pk=but.pk).exists() if but else cases.exists()


def _case_data(case: TestCase) -> dict[str, Any]:
    return {
        "name": case.name,
        "variables": case.variables,
        "assertions": case.assertions,
        "tags": case.tags,
    }


@transaction.atomic
def test_case_create(
    *,
    actor: User,
    template: PromptTemplate,
    name: str,
    variables: dict[str, Any],
    assertions: list[dict[str, Any]],
    tags: list[str] | None = None,
    request: HttpRequest | None = None,
) -> TestCase:
    require_squad_permission(actor, template.squad, WRITE_TEST_CASES)
    data = _clean_case(
        template, {"name": name, "variables": variables, "assertions": assertions, "tags": tags}
    )
    taken = Conflict(f"A test case named '{data['name']}' already exists.", field="name")
    if TestCase.objects.filter(template=template, name=data["name"]).exists():
        raise taken
    try:
        with transaction.atomic():  # another request may take the name after the check
            case = TestCase.objects.create(
                squad_id=template.squad_id, template=template, created_by=actor, **data
            )
    except IntegrityError as exc:
        if _name_taken(template, data["name"]):
            raise taken from exc
        raise
    audit_log(
        actor=actor,
        action="eval.case_created",
        squad=template.squad,
        target=case,
        data={"prompt": template.slug, **data},
        request=request,
    )
    return case


@transaction.atomic
def test_case_update(
    *,
    actor: User,
    case: TestCase,
    name: str | None = None,
    variables: dict[str, Any] | None = None,
    assertions: list[dict[str, Any]] | None = None,
    tags: list[str] | None = None,
    request: HttpRequest | None = None,
) -> TestCase:
    """Change the given fields (None leaves one as it is)."""
    template = case.template
    require_squad_permission(actor, template.squad, WRITE_TEST_CASES)
    before = _case_data(case)
    changes = {
        k: v
        for k, v in {
            "name": name,
            "variables": variables,
            "assertions": assertions,
            "tags": tags,
        }.items()
        if v is not None
    }
    data = _clean_case(template, {**before, **changes})
    if data == before:
        return case
    taken = Conflict(f"A test case named '{data['name']}' already exists.", field="name")
    if (
        data["name"] != case.name
        and TestCase.objects.filter(template=template, name=data["name"]).exists()
    ):
        raise taken
    for key, value in data.items():
        setattr(case, key, value)
    case.updated_at = timezone.now()
    try:
        with transaction.atomic():  # another request may take the name after the check
            case.save()
    except IntegrityError as exc:
        if _name_taken(template, data["name"], but=case):
            raise taken from exc
        raise
    audit_log(
        actor=actor,
        action="eval.case_updated",
        squad=template.squad,
        target=case,
        data={
            "prompt": template.slug,
            "changed": sorted(k for k in data if data[k] != before[k]),
            **data,
        },
        request=request,
    )
    return case


@transaction.atomic
def test_case_delete(*, actor: User, case: TestCase, request: HttpRequest | None = None) -> None:
    """Results of earlier runs keep their copy of the case."""
    template = case.template
    require_squad_permission(actor, template.squad, WRITE_TEST_CASES)
    audit_log(
        actor=actor,
        action="eval.case_deleted",
        squad=template.squad,
        target=case,
        data={"prompt": template.slug, **_case_data(case)},
        request=request,
    )
    case.delete()


@dataclass
class ImportResult:
    created: int
    updated: int
    unchanged: int


def _refuse_import(errors: list[dict[str, Any]]) -> None:
    shown = errors[:MAX_REPORTED_ERRORS]
    summary = "; ".join(f"line {e['line']}: {e['message']}" for e in shown[:5])
    more = f" ({len(errors)} problems in all)" if len(errors) > 5 else ""
    raise ValidationFailed(
        f"{len(errors)} problem(s) — nothing was imported. {summary}{more}",
        field="file",
        extra=shown,
    )


def parse_cases(template: PromptTemplate, content: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Every line of a JSONL file checked as a test case; any problem refuses the whole
    file with every problem by line (first 100 listed)."""
    if len(content) > MAX_IMPORT_BYTES:
        raise ValidationFailed(
            f"The file is {len(content)} bytes; the limit is {MAX_IMPORT_BYTES}.", field="file"
        )
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"The file is not UTF-8 ({exc}).", field="file") from exc
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ValidationFailed("The file has no test cases.", field="file")
    if len(lines) > MAX_IMPORT_LINES:
        raise ValidationFailed(
            f"{len(lines)} lines; the limit is {MAX_IMPORT_LINES}.", field="file"
        )
    errors: list[dict[str, Any]] = []
    cases: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for line_no, line in lines:
        try:
            raw = parse_json(line, field="file")
        except ValidationFailed as exc:
            message = exc.message.rstrip(".")
            errors.append({"line": line_no, "field": "", "message": message})
            continue
        if not isinstance(raw, dict):
            errors.append({"line": line_no, "field": "", "message": "not a JSON object"})
            continue
        unknown = sorted(set(raw) - set(CASE_KEYS))
        if unknown:
            errors.append(
                {
                    "line": line_no,
                    "field": unknown[0],
                    "message": f"unknown key '{unknown[0]}' (keys: {', '.join(CASE_KEYS)})",
                }
            )
            continue
        try:
            case = _clean_case(template, raw)
        except ValidationFailed as exc:
            errors.append({"line": line_no, "field": exc.field or "", "message": exc.message})
            continue
        if case["name"] in seen:
            message = f"name '{case['name']}' is already used on line {seen[case['name']]}"
            errors.append({"line": line_no, "field": "name", "message": message})
            continue
        seen[case["name"]] = line_no
        cases.append((line_no, case))
    if errors:
        _refuse_import(errors)
    return cases


@transaction.atomic
def test_cases_import(
    *,
    actor: User,
    template: PromptTemplate,
    content: bytes,
    filename: str = "",
    request: HttpRequest | None = None,
) -> ImportResult:
    """JSONL, one case per line ({"name", "variables", "assertions", "tags"}). A case whose
    name exists is replaced; the others are added. All or nothing."""
    require_squad_permission(actor, template.squad, WRITE_TEST_CASES)
    parsed = parse_cases(template, content)
    existing = {c.name: c for c in TestCase.objects.select_for_update().filter(template=template)}
    created = updated = unchanged = 0
    now = timezone.now()
    for _, data in parsed:
        case = existing.get(data["name"])
        if case is None:
            try:
                with transaction.atomic():  # another request may add the same name
                    TestCase.objects.create(
                        squad_id=template.squad_id, template=template, created_by=actor, **data
                    )
            except IntegrityError as exc:
                if not _name_taken(template, data["name"]):
                    raise
                raise Conflict(
                    f"A test case named '{data['name']}' was added meanwhile; nothing was "
                    "imported. Import the file again to replace it.",
                    field="file",
                ) from exc
            created += 1
        elif _case_data(case) == data:
            unchanged += 1
        else:
            for key, value in data.items():
                setattr(case, key, value)
            case.updated_at = now
            case.save()
            updated += 1
    result = ImportResult(created=created, updated=updated, unchanged=unchanged)
    audit_log(
        actor=actor,
        action="eval.cases_imported",
        squad=template.squad,
        target=template,
        data={
            "prompt": template.slug,
            "filename": filename[:255],
            "created": created,
            "updated": updated,
            "unchanged": unchanged,
        },
        request=request,
    )
    return result


def test_cases_export(cases: list[TestCase]) -> str:
    """JSONL in the import format (read `cases` with `selectors.test_case_list_for_user`)."""
    return "".join(json.dumps(_case_data(c), ensure_ascii=False) + "\n" for c in cases)


# --- eval runs -----------------------------------------------------------------------------


@transaction.atomic
def eval_run_create(
    *,
    actor: User,
    version: PromptVersion,
    target_name: str | None = None,
    tags: list[str] | None = None,
    batch_size: int = 8,
    request: HttpRequest | None = None,
) -> EvalRun:
    """Queue a run of `version` on a model target (the version's own by default) over the
    template's cases, or those carrying one of `tags`."""
    template = version.template
    squad = template.squad
    require_squad_permission(actor, squad, RUN_EVALS)
    if not 1 <= batch_size <= 64:
        raise ValidationFailed("batch_size must be 1 to 64.", field="batch_size")
    target = target_resolve(squad_id=squad.pk, name=target_name or version.model_settings["target"])
    tags = clean_tags(tags)
    cases = list(cases_with_tags(TestCase.objects.filter(template=template), tags))
    if not cases:
        where = f" with any of the tags {', '.join(tags)}" if tags else ""
        raise ValidationFailed(
            f"Prompt '{template.slug}' has no test cases{where} to run.",
            field="tags" if tags else "cases",
        )
    run = EvalRun.objects.create(
        squad=squad,
        version=version,
        target=target,
        tags=tags,
        cases=[{"id": c.pk, **_case_data(c)} for c in cases],
        total=len(cases),
        batch_size=batch_size,
        created_by=actor,
    )
    audit_log(
        actor=actor,
        action="eval.run_started",
        squad=squad,
        target=run,
        data={
            "prompt": template.slug,
            "version": version.number,
            "target": target.name,
            "tags": tags,
            "cases": len(cases),
        },
        request=request,
    )
    jobs.enqueue(run)
    return run


@transaction.atomic
def eval_run_cancel(*, actor: User, run: EvalRun, request: HttpRequest | None = None) -> EvalRun:
    """A queued run stops at once; a running one after its current chunk of cases."""
    require_squad_permission(actor, run.squad, RUN_EVALS)
    return jobs.cancel(actor=actor, job=run, request=request)


def _counts(run: EvalRun) -> dict[str, Any]:
    counts = run.results.aggregate(done=Count("pk"), passed=Count("pk", filter=Q(passed=True)))
    done, passed = counts["done"], counts["passed"]
    return {
        "done": done,
        "passed": passed,
        "failed_count": done - passed,
        "pass_rate": passed / done if done else None,
    }


def eval_run_execute(*, run_id: int) -> EvalRun | None:
    """Run one given eval run in this process (tests, management); workers run the next
    GPU job in fair-share order (apps.evals.tasks)."""
    return jobs.run(EVAL.name, run_id)


def _run_eval(lease: jobs.Lease) -> None:
    """Worker side. Resumable and idempotent: cases that already have a result are
    skipped, and the unique (run, position) constraint makes a second writer harmless;
    every write is fenced by the lease."""
    run: EvalRun = lease.job
    bind_generation(run.version, run.target, eval_run_id=run.pk)
    done = set(run.results.values_list("position", flat=True))
    pending = [(i, case) for i, case in enumerate(run.cases) if i not in done]
    policy = policy_version_current(squad_id=run.squad_id)
    chunk_size = run.batch_size * 4
    for start in range(0, len(pending), chunk_size):
        if lease.should_stop():
            return
        _store(lease, _evaluate(run, pending[start : start + chunk_size], policy))
    lease.finish(EvalRun.Status.SUCCEEDED, **_counts(run))


def _generation(run: EvalRun, prepared: pipeline.Prepared) -> Generation:
    return Generation(
        squad_id=run.squad_id,
        prompt_version_id=run.version_id,
        target_id=run.target_id,
        variables=prepared.variables,
        rendered_hash=prepared.digest,
        source=Generation.Source.EVAL,
        requested_by_id=run.created_by_id,
        findings=prepared.findings,
        policy_version=prepared.policy,
    )


def _result(
    run: EvalRun, position: int, case: dict[str, Any], generation_row: Generation | None
) -> EvalResult:
    return EvalResult(
        run=run,
        case_id=case["id"],
        position=position,
        case_name=case["name"],
        variables=case["variables"],
        assertions=case["assertions"],
        generation=generation_row,
        generation_status=generation_row.status if generation_row else "",
        output=generation_row.output_text if generation_row else "",
        latency_ms=generation_row.latency_ms if generation_row else 0,
        output_tokens=generation_row.output_tokens if generation_row else 0,
    )


def _evaluate(
    run: EvalRun, chunk: list[tuple[int, dict[str, Any]]], policy: PolicyVersion | None
) -> list[EvalResult]:
    """Render, check (governance), generate (execute_rows: contract, repair, fallback),
    judge and assert one chunk of cases; nothing is stored here."""
    version, target = run.version, run.target
    results: list[EvalResult] = []
    ready: list[tuple[int, dict[str, Any], pipeline.Prepared]] = []
    for position, case in chunk:
        errors = validate_variables(version.input_schema, case["variables"])
        if errors:
            result = _result(run, position, case, None)
            listed = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
            result.assertion_results = [
                {
                    "type": "variables",
                    "passed": False,
                    "detail": f"refused by the input schema of v{version.number}: {listed}",
                }
            ]
            results.append(result)
            continue
        prepared = pipeline.prepare(version, case["variables"], policy)
        if prepared.blocked:
            row = _generation(run, prepared)
            pipeline.block(row, prepared, version, target)
            result = _result(run, position, case, row)
            result.assertion_results = [
                {"type": "governance", "passed": False, "detail": row.errors[0]["message"]}
            ]
            results.append(result)
        else:
            ready.append((position, case, prepared))
    if not ready:
        return results
    outcomes = pipeline.execute_rows(
        version,
        target,
        [prepared.messages for _, _, prepared in ready],
        batch_size=run.batch_size,
        max_new_tokens_cap=rules_of(policy)["max_output_tokens"],
    )
    rows: list[tuple[int, dict[str, Any], Generation]] = []
    for (position, case, prepared), outcome in zip(ready, outcomes, strict=True):
        row = _generation(run, prepared)
        pipeline.apply_outcome(row, outcome, version, policy)
        rows.append((position, case, row))
    answers = _judge(run, rows)
    for (position, case, row), judged in zip(rows, answers, strict=True):
        result = _result(run, position, case, row)
        seen = checks.Observed(
            output_text=row.output_text,
            latency_ms=row.latency_ms,
            output_tokens=row.output_tokens,
            output_schema=version.output_schema,
            judge_answers=judged,
        )
        verdicts = checks.evaluate(case["assertions"], seen)
        if row.status in (Generation.Status.FAILED, Generation.Status.BLOCKED):
            message = "; ".join(e["message"] for e in row.errors[:3]) or row.status
            verdicts.insert(
                0, {"type": "generation", "passed": False, "detail": f"{row.status}: {message}"}
            )
        result.assertion_results = verdicts
        result.passed = all(v["passed"] for v in verdicts)
        results.append(result)
    return results


def _judge(run: EvalRun, rows: list[tuple[int, dict[str, Any], Generation]]) -> list[dict]:
    """Each row's judge answers by assertion index: one batched call per judge target
    (greedy, a few tokens). A failed call or an unknown target gives "error: …"."""
    from workers.runtime import BackendError, GenerationParams
    from workers.runtime.backends import run_conversations

    answers: list[dict[int, str]] = [{} for _ in rows]
    wanted: dict[str, list[tuple[int, int, list[dict[str, str]]]]] = {}
    for k, (_, case, row) in enumerate(rows):
        for index, name in checks.judge_targets(case["assertions"]):
            if row.status in (Generation.Status.FAILED, Generation.Status.BLOCKED):
                answers[k][index] = "error: no output to judge"
                continue
            conversation = checks.judge_conversation(
                case["assertions"][index], row.variables, row.output_text
            )
            wanted.setdefault(name, []).append((k, index, conversation))
    params = GenerationParams(max_new_tokens=JUDGE_MAX_TOKENS, temperature=0.0, seed=0)
    for name, calls in wanted.items():
        try:
            judge: ModelTarget = target_resolve(squad_id=run.squad_id, name=name)
        except NotFound as exc:
            for k, index, _ in calls:
                answers[k][index] = f"error: {exc.message}"
            continue
        outcomes = run_conversations(
            pipeline.target_spec(judge),
            [conversation for _, _, conversation in calls],
            params,
            batch_size=run.batch_size,
        )
        for (k, index, _), outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, BackendError):
                answers[k][index] = f"error: {outcome}"
            else:
                answers[k][index] = outcome.text
    return answers


def _store(lease: jobs.Lease, results: list[EvalResult]) -> None:
    """One chunk's generations, results and the counters in one transaction, while the
    lease holds (jobs.LeaseLost, nothing written, else)."""
    run: EvalRun = lease.job
    ids = {r.case_id for r in results if r.case_id}
    alive = set(TestCase.objects.filter(pk__in=ids).values_list("pk", flat=True))
    for r in results:
        if r.case_id not in alive:
            r.case_id = None  # deleted since the run started: the copy on the result stays
    with lease.fenced():
        taken = set(
            run.results.filter(position__in=[r.position for r in results]).values_list(
                "position", flat=True
            )
        )
        results = [r for r in results if r.position not in taken]
        rows = [r.generation for r in results if r.generation is not None]
        Generation.objects.bulk_create(rows)
        for r in results:
            r.generation_id = r.generation.pk if r.generation else None
        EvalResult.objects.bulk_create(results)
        EvalRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now(), **_counts(run))
    if rows:
        generations_finished(rows, prompt=run.version.template.slug, target=run.target.name)


def _eval_summary(run: EvalRun) -> dict[str, Any]:
    version = run.version
    return {
        "template": version.template.slug,
        "version": version.number,
        "target": run.target.name,
        "done": run.done,
        "total": run.total,
        "passed": run.passed,
        "pass_rate": run.pass_rate,
    }


EVAL = jobs.register(
    jobs.JobKind(
        name="eval",
        label="Eval run",
        model=EvalRun,
        task="evals.run",
        queue=queues.Queue.GPU,
        audit_prefix="eval.run",
        run=_run_eval,
        summary=_eval_summary,
        url=lambda run: reverse("evals:run", kwargs={"squad": run.squad.slug, "run_id": run.pk}),
        related=("version__template", "target", "squad", "created_by"),
    )
)
