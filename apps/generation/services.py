"""Generation: single calls (playground, API) and batch jobs, run on the gpu queue.

Web side: `generation_request` and `batch_job_create` validate everything first
(variables against the input schema, every uploaded row), store the work and
enqueue it at commit. Worker side: `generation_run` and `batch_job_run` render,
call the runtime (workers.runtime, imported lazily), enforce the output contract
(one repair attempt, then the fallback target) and record the results.
"""

import csv
import hashlib
import io
import json
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core import jobs, queues
from apps.core.exceptions import Conflict, ValidationFailed
from apps.core.files import write_atomically
from apps.core.uploads import RowError, checked, json_value
from apps.core.validation import clean_slug, parse_json
from apps.generation import pipeline
from apps.generation.models import BatchJob, Generation, ModelTarget
from apps.generation.targets import clean_target_fields, target_resolve
from apps.governance import checks as governance
from apps.governance.models import PolicyVersion
from apps.governance.selectors import policy_version_current, rules_of
from apps.prompts.contracts import validate_variables
from apps.prompts.models import PromptVersion
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_TARGETS, RUN_GENERATION
from apps.telemetry.context import request_context
from apps.telemetry.recording import bind_generation, generations_finished

if TYPE_CHECKING:
    from apps.finetune.models import Adapter

User = AbstractBaseUser
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_ROWS = 100_000
MAX_REPORTED_ERRORS = 100
RUN_GENERATION_TASK = "generation.run"
RUN_BATCH_TASK = "generation.batch_job"


# --- targets ---------------------------------------------------------------------------


@transaction.atomic
def model_target_create(
    *,
    actor: User,
    squad: Squad | None,
    name: str,
    adapter: "Adapter | None" = None,
    request: HttpRequest | None = None,
    **fields: Any,
) -> ModelTarget:
    """A squad's target (MANAGE_TARGETS) or a global one (staff). `adapter`: an approved
    Adapter of the squad trained on the target's base model (by manifest hash), attached
    through `apps.finetune.jobs.model_target_set_adapter` (its checks, its audit)."""
    if squad is None:
        if not actor.is_staff:
            raise ValidationFailed("Only staff can create global model targets.", field="squad")
    else:
        require_squad_permission(actor, squad, MANAGE_TARGETS)
    name = clean_slug(name, field="name", limit=100)
    data = clean_target_fields(dict(fields))
    if ModelTarget.objects.filter(squad=squad, name=name).exists():
        raise Conflict(f"A model target named '{name}' already exists here.", field="name")
    target = ModelTarget.objects.create(squad=squad, name=name, **data)
    if adapter is not None:
        _set_adapter(actor, target, adapter, request)
        target.refresh_from_db(fields=["lora_adapter"])
    audit_log(
        actor=actor,
        action="generation.target_created",
        squad=squad,
        target=target,
        data={
            "name": name,
            "kind": target.kind,
            "base_url": target.base_url,
            "base_model": target.base_model,
        },
        request=request,
    )
    return target


TARGET_FIELDS = (
    "description",
    "base_model",
    "base_url",
    "remote_model",
    "token_env",
    "adapter_id",
    "default_params",
    "context_length",
    "price_input_per_1k",
    "price_output_per_1k",
)


@transaction.atomic
def model_target_update(
    *,
    actor: User,
    target: ModelTarget,
    adapter: "Adapter | None" = None,
    enabled: bool = True,
    request: HttpRequest | None = None,
    **fields: Any,
) -> ModelTarget:
    """Change one of a squad's own targets (MANAGE_TARGETS; its name and kind stay):
    every field of TARGET_FIELDS as given (missing ones are emptied, as a form sends
    them), checked as at creation, and its adapter (`adapter`, None to detach). A base
    model the attached adapter was not trained on is refused unless the adapter changes
    too. Audited with the fields that changed."""
    if target.squad is None:
        raise ValidationFailed(
            f"Target '{target.name}' is global; staff change it in the admin.", field="target"
        )
    require_squad_permission(actor, target.squad, MANAGE_TARGETS)
    target = (
        ModelTarget.objects.select_for_update(of=("self",))
        .select_related("squad")
        .get(pk=target.pk)
    )
    unknown = sorted(set(fields) - set(TARGET_FIELDS))
    if unknown:
        raise ValidationFailed(f"Unknown target field '{unknown[0]}'.", field=unknown[0])
    data = clean_target_fields({"kind": target.kind, **fields})
    data.pop("kind")
    data.setdefault("base_model", "")
    data["default_params"] = data.get("default_params") or {}
    if not isinstance(enabled, bool):
        raise ValidationFailed("enabled must be true or false.", field="enabled")
    data["enabled"] = enabled
    changed = sorted(
        name
        for name, value in data.items()
        if getattr(target, name) != (value if value is not None else "")
    )
    for name, value in data.items():
        setattr(target, name, value if value is not None else "")
    target.save()
    if adapter is not None and adapter.pk != target.lora_adapter_id:
        _set_adapter(actor, target, adapter, request)
    elif adapter is None and target.lora_adapter_id is not None:
        _set_adapter(actor, target, None, request)
    elif adapter is not None and "base_model" in changed:
        _set_adapter(actor, target, adapter, request)  # checked again on the new base
    target.refresh_from_db(fields=["lora_adapter"])
    audit_log(
        actor=actor,
        action="generation.target_updated",
        squad=target.squad,
        target=target,
        data={
            "name": target.name,
            "changed": changed,
            "base_model": target.base_model,
            "base_url": target.base_url,
            "adapter": target.lora_adapter_id,
        },
        request=request,
    )
    return target


def _set_adapter(
    actor: User, target: ModelTarget, adapter: "Adapter | None", request: HttpRequest | None
) -> None:
    from apps.finetune.jobs import model_target_set_adapter

    model_target_set_adapter(actor=actor, target=target, adapter=adapter, request=request)


# --- single generations -----------------------------------------------------------------


@transaction.atomic
def generation_request(
    *,
    actor: User,
    version: PromptVersion,
    variables: dict[str, Any],
    source: str = Generation.Source.API,
    target_name: str | None = None,
    request: HttpRequest | None = None,
) -> Generation:
    """Queue one generation on the gpu queue. Variables are checked now (422 with every
    error), so a queued generation can only fail for reasons of the model."""
    squad = version.template.squad
    require_squad_permission(actor, squad, RUN_GENERATION)
    if source not in (Generation.Source.PLAYGROUND, Generation.Source.API):
        raise ValidationFailed("source must be playground or api.", field="source")
    target = target_resolve(squad_id=squad.pk, name=target_name or version.model_settings["target"])
    bind_generation(version, target)
    pipeline.render(version, variables)  # RenderFailed (422) lists every variable error
    # Only what the policy lets through is stored: redacted variables, never the originals.
    prepared = pipeline.prepare(version, variables, policy_version_current(squad_id=squad.pk))
    generation = Generation(
        squad=squad,
        prompt_version=version,
        target=target,
        variables=prepared.variables,
        rendered_hash=prepared.digest,
        source=source,
        requested_by=actor,
        findings=prepared.findings,
        policy_version=prepared.policy,
        context=request_context(request),
    )
    if prepared.blocked:
        pipeline.block(generation, prepared, version, target)
        generation.save()
        generations_finished([generation], prompt=version.template.slug, target=target.name)
        return generation
    generation.save()
    transaction.on_commit(
        lambda: queues.send(RUN_GENERATION_TASK, generation.pk, queue=queues.Queue.GPU)
    )
    return generation


def generation_run(*, generation_id: int) -> Generation:
    """Worker side. Idempotent: a finished generation is left as it is."""
    with transaction.atomic():
        generation = (
            # Only the generation's row: PostgreSQL refuses FOR UPDATE on the nullable side
            # of an outer join (prompt_version is empty for gateway calls on a target).
            Generation.objects.select_for_update(of=("self",))
            .select_related("prompt_version__template", "target")
            .get(pk=generation_id)
        )
        if generation.finished:
            return generation
        generation.status = Generation.Status.RUNNING
        generation.save(update_fields=["status"])
    version, policy = generation.prompt_version, generation.policy_version
    bind_generation(version, generation.target, generation_id=generation.pk)
    finished = partial(
        generations_finished,
        [generation],
        prompt=version.template.slug,
        target=generation.target.name,
    )
    try:
        # The stored variables are already redacted; this renders them and redacts what
        # the template adds, under the policy version the request was checked with.
        messages = pipeline.prepare(version, generation.variables, policy).messages
        outcome = pipeline.execute_rows(
            version,
            generation.target,
            [messages],
            batch_size=1,
            max_new_tokens_cap=rules_of(policy)["max_output_tokens"],
        )[0]
    except Exception as exc:
        # Never leave a generation "running": record why it could not finish.
        generation.status = Generation.Status.FAILED
        generation.errors = [{"path": "", "message": f"{type(exc).__name__}: {exc}"}]
        generation.finished_at = timezone.now()
        generation.save(update_fields=["status", "errors", "finished_at"])
        finished()
        raise
    pipeline.apply_outcome(generation, outcome, version, policy)
    generation.save()
    finished()
    return generation


# --- batch jobs -----------------------------------------------------------------------------


def parse_rows(content: bytes, filename: str) -> tuple[list[tuple[int, Any]], list[dict]]:
    """(rows with their line numbers, errors) from JSONL (one object per line) or CSV (a
    header row; values that parse as JSON — numbers, true/false, objects — are taken as
    such). Refuses outright only what cannot be read at all."""
    if len(content) > MAX_UPLOAD_BYTES:
        raise ValidationFailed(
            f"The file is {len(content)} bytes; the limit is {MAX_UPLOAD_BYTES}.", field="file"
        )
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"The file is not UTF-8 ({exc}).", field="file") from exc
    errors: list[dict[str, Any]] = []
    rows: list[tuple[int, Any]] = []
    if filename.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise ValidationFailed("The CSV file has no header row.", field="file")
        line_no = 2
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # e.g. a cell past the csv module's 131,072 characters
                errors.append(
                    {
                        "row": line_no,
                        "message": f"not readable as CSV: {exc}; the rest of the file was not read",
                    }
                )
                break
            if None in record:
                errors.append({"row": line_no, "message": "more values than header columns"})
            else:
                try:
                    rows.append((line_no, {k: _csv_value(k, v) for k, v in record.items()}))
                except RowError as exc:
                    errors.append({"row": line_no, "message": str(exc)})
            line_no = reader.line_num + 1
    elif filename.lower().endswith((".jsonl", ".ndjson", ".json")):
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json_value(line)))
            except RowError as exc:
                errors.append({"row": line_no, "message": str(exc)})
    else:
        raise ValidationFailed("Upload a .jsonl or .csv file.", field="file")
    if not rows and not errors:
        raise ValidationFailed("The file has no rows.", field="file")
    if len(rows) > MAX_ROWS:
        raise ValidationFailed(f"{len(rows)} rows; the limit is {MAX_ROWS}.", field="file")
    return rows, errors


def _csv_value(column: str, value: str | None) -> Any:
    """A cell: the JSON value it holds, or its text; RowError naming the column when
    neither can be stored."""
    if value is None:
        return None
    try:
        parsed = parse_json(value, field=column)
    except ValidationFailed as exc:
        if exc.extra["reason"] != "syntax":  # JSON, but too deep or a too-long number
            raise RowError(f"column {column}: {exc.message.rstrip('.')}") from None
        parsed = value  # not JSON: the cell is text
    try:
        return checked(parsed)
    except RowError as exc:
        raise RowError(f"column {column}: {exc}") from None


def _refuse(errors: list[dict[str, Any]], *, total_rows: int) -> None:
    """Refuse the file: the message counts the rows refused (a row may have several
    problems) out of the file's rows; the problems themselves, by row, are `extra` (the
    first MAX_REPORTED_ERRORS), not repeated in the message."""
    shown = errors[:MAX_REPORTED_ERRORS]
    refused = len({e["row"] for e in errors})
    rows = f"{refused} of {total_rows} row{'s' if total_rows != 1 else ''} refused"
    problems = f" ({len(errors)} problems)" if len(errors) != refused else ""
    raise ValidationFailed(
        f"{rows}{problems} — nothing was stored.",
        field="file",
        extra=shown,
    )


def validate_rows(
    version: PromptVersion, rows: list[tuple[int, Any]], errors: list[dict[str, Any]]
) -> None:
    """Check every row against the input schema; refuse with all problems, by row."""
    unreadable = {e["row"] for e in errors}
    errors = list(errors)
    for line_no, row in rows:
        for error in validate_variables(version.input_schema, row):
            errors.append({"row": line_no, "path": error["path"], "message": error["message"]})
    if errors:
        _refuse(sorted(errors, key=lambda e: e["row"]), total_rows=len(rows) + len(unreadable))


@transaction.atomic
def batch_job_create(
    *,
    actor: User,
    version: PromptVersion,
    content: bytes,
    filename: str,
    target_name: str | None = None,
    batch_size: int = 32,
    request: HttpRequest | None = None,
) -> BatchJob:
    """Validate every row against the input schema, store the rows, queue the job.
    Any bad row refuses the whole upload (first 100 errors listed), storing nothing."""
    squad = version.template.squad
    require_squad_permission(actor, squad, RUN_GENERATION)
    if not 1 <= batch_size <= 128:
        raise ValidationFailed("batch_size must be 1 to 128.", field="batch_size")
    target = target_resolve(squad_id=squad.pk, name=target_name or version.model_settings["target"])
    numbered, errors = parse_rows(content, filename)
    validate_rows(version, numbered, errors)
    rows = [row for _, row in numbered]
    normalised = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    # What is kept on disk is what the policy in force lets through: values it redacts
    # are written redacted (the sha256 stays that of the rows as uploaded).
    data = _stored_rows(version, rows, policy_version_current(squad_id=squad.pk))
    job = BatchJob.objects.create(
        squad=squad,
        prompt_version=version,
        target=target,
        created_by=actor,
        source_name=filename[:255],
        rows_path="",
        rows_sha256=hashlib.sha256(normalised.encode()).hexdigest(),
        rows_total=len(rows),
        batch_size=batch_size,
    )
    path = Path(settings.DATA_DIR) / "batches" / f"{job.pk}" / "rows.jsonl"
    write_atomically(path, data)
    try:
        job.rows_path = str(path)
        job.save(update_fields=["rows_path"])
        _audit_batch_start(actor, job, version, target, len(rows), request)
    except BaseException:
        path.unlink(missing_ok=True)  # the rollback takes the row; take the file too
        raise
    jobs.enqueue(job)
    return job


# The first line of a rows file written since uploads are redacted; older files hold one
# variables object per line.
ROWS_HEADER = {"studio_rows": 2}


def _stored_rows(version: PromptVersion, rows: list[Any], policy: PolicyVersion | None) -> bytes:
    """The rows file: a header line, then per row the variables as the policy lets them
    through and the redactions made (they cannot be found again in redacted text).
    Flags and blocks are checked again when the row runs, under the policy then in force."""
    rules = rules_of(policy)
    lines = [json.dumps(ROWS_HEADER)]
    for row in rows:
        # The variables only: rendering every row here would cost the upload request
        # ~0.5 ms a row; the worker renders (and checks the messages) when the row runs.
        checked = governance.check_input(
            rules, row, render=lambda _: [], wants_json=False, has_output_schema=True
        )
        redactions = [f for f in checked.findings if f["action"] == "redact"]
        stored = checked.variables if redactions else row
        lines.append(
            json.dumps({"variables": stored, "redactions": redactions}, ensure_ascii=False)
        )
    return ("\n".join(lines) + "\n").encode()


def _read_rows(path: str) -> list[tuple[Any, list[dict[str, Any]]]]:
    """(variables, redactions made at upload) per row, from either file layout."""
    with open(path, encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    if lines and lines[0] == ROWS_HEADER:
        return [(line["variables"], line["redactions"]) for line in lines[1:]]
    return [(line, []) for line in lines]


def _audit_batch_start(
    actor: User,
    job: BatchJob,
    version: PromptVersion,
    target: ModelTarget,
    rows: int,
    request: HttpRequest | None,
) -> None:
    squad = job.squad
    audit_log(
        actor=actor,
        action="generation.batch_started",
        squad=squad,
        target=job,
        data={
            "prompt": version.template.slug,
            "version": version.number,
            "target": target.name,
            "rows": rows,
            "sha256": job.rows_sha256,
        },
        request=request,
    )


@transaction.atomic
def batch_job_cancel(*, actor: User, job: BatchJob, request: HttpRequest | None = None) -> BatchJob:
    """A queued job is cancelled at once; a running one stops before its next chunk."""
    require_squad_permission(actor, job.squad, RUN_GENERATION)
    return jobs.cancel(actor=actor, job=job, request=request)


def batch_job_run(*, job_id: int) -> BatchJob | None:
    """Run one given batch job in this process (tests, management); workers run the next
    job in fair-share order (apps.generation.tasks)."""
    return jobs.run(BATCH.name, job_id)


def _run_batch(lease: jobs.Lease) -> None:
    """Worker side. Resumable and idempotent: rows that already have a Generation are
    skipped, and the unique (job, row) constraint makes a second writer harmless; every
    write is fenced by the lease, so a worker that lost it writes nothing."""
    job: BatchJob = lease.job
    version, target = job.prompt_version, job.target
    bind_generation(version, target)
    try:
        rows = _read_rows(job.rows_path)
    except OSError as exc:
        lease.finish(BatchJob.Status.FAILED, f"rows file unreadable: {exc}")
        return
    done = set(job.generations.values_list("row_index", flat=True))
    policy = policy_version_current(squad_id=job.squad_id)
    cap = rules_of(policy)["max_output_tokens"]
    todo, blocked = [], []
    for index, (variables, redactions) in enumerate(rows):
        if index in done:
            continue
        prepared = pipeline.prepare(version, variables, policy)
        prepared.findings = [*redactions, *prepared.findings]
        (blocked if prepared.blocked else todo).append((index, prepared))
    # Length-sorted: rows of similar length share a batch, so little padding is wasted.
    todo.sort(key=lambda item: sum(len(m["content"]) for m in item[1].messages))
    chunk_size = job.batch_size * 4
    if blocked:
        stopped = [_row_generation(job, index, prepared) for index, prepared in blocked]
        for generation, (_, prepared) in zip(stopped, blocked, strict=True):
            pipeline.block(generation, prepared, version, target)
        _store_chunk(lease, stopped, 0.0)
    for start in range(0, len(todo), chunk_size):
        if lease.should_stop():
            return
        chunk = todo[start : start + chunk_size]
        began = time.monotonic()
        outcomes = pipeline.execute_rows(
            version,
            target,
            [prepared.messages for _, prepared in chunk],
            batch_size=job.batch_size,
            max_new_tokens_cap=cap,
        )
        elapsed = time.monotonic() - began
        generations = []
        for (index, prepared), outcome in zip(chunk, outcomes, strict=True):
            generation = _row_generation(job, index, prepared)
            pipeline.apply_outcome(generation, outcome, version, policy)
            generations.append(generation)
        _store_chunk(lease, generations, elapsed)
    lease.finish(BatchJob.Status.SUCCEEDED)


def _row_generation(job: BatchJob, index: int, prepared: pipeline.Prepared) -> Generation:
    return Generation(
        squad_id=job.squad_id,
        prompt_version_id=job.prompt_version_id,
        target_id=job.target_id,
        variables=prepared.variables,
        rendered_hash=prepared.digest,
        source=Generation.Source.BATCH,
        requested_by_id=job.created_by_id,
        batch_job_id=job.pk,
        row_index=index,
        findings=prepared.findings,
        policy_version=prepared.policy,
    )


def _store_chunk(lease: jobs.Lease, generations: list[Generation], elapsed: float) -> None:
    """One chunk's rows and the counters, while the lease holds (jobs.LeaseLost else)."""
    job = lease.job
    with lease.fenced():
        created = generations
        try:
            with transaction.atomic():
                Generation.objects.bulk_create(generations)
        except IntegrityError:
            # Another run wrote some of these rows: keep theirs, add the rest.
            existing = set(
                Generation.objects.filter(
                    batch_job=job, row_index__in=[g.row_index for g in generations]
                ).values_list("row_index", flat=True)
            )
            created = [g for g in generations if g.row_index not in existing]
            Generation.objects.bulk_create(created)
        BatchJob.objects.filter(pk=job.pk).update(
            rows_done=Generation.objects.filter(batch_job=job).count(),
            output_tokens=F("output_tokens") + sum(g.output_tokens for g in created),
            generation_seconds=F("generation_seconds") + elapsed,
            heartbeat_at=timezone.now(),
        )
    generations_finished(created, prompt=job.prompt_version.template.slug, target=job.target.name)


def _batch_summary(job: BatchJob) -> dict[str, Any]:
    version = job.prompt_version
    return {
        "template": version.template.slug,
        "version": version.number,
        "target": job.target.name,
        "rows_done": job.rows_done,
        "rows_total": job.rows_total,
    }


BATCH = jobs.register(
    jobs.JobKind(
        name="batch",
        label="Batch",
        model=BatchJob,
        task=RUN_BATCH_TASK,
        queue=queues.Queue.GPU,
        audit_prefix="generation.batch",
        run=_run_batch,
        summary=_batch_summary,
        url=lambda job: reverse(
            "generation:batch_detail", kwargs={"squad": job.squad.slug, "job_id": job.pk}
        ),
        related=("prompt_version__template", "target", "squad", "created_by"),
    )
)
