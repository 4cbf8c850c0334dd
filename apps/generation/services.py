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
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core.exceptions import Conflict, ValidationFailed
from apps.core.files import write_atomically
from apps.core.uploads import RowError, checked, json_value
from apps.core.validation import clean_slug
from apps.generation import structured
from apps.generation.models import BatchJob, Generation, ModelTarget
from apps.generation.targets import clean_target_fields, target_resolve
from apps.governance import checks as governance
from apps.governance import provenance
from apps.governance.models import PolicyVersion
from apps.governance.selectors import policy_version_current, rules_of
from apps.prompts.contracts import RenderFailed, render_messages, validate_variables
from apps.prompts.models import PromptVersion
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_TARGETS, RUN_GENERATION
from apps.telemetry.context import request_context
from apps.telemetry.metrics import job_finished
from apps.telemetry.recording import bind_generation, generations_finished
from apps.webhooks import emitters as webhooks

User = AbstractBaseUser
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_ROWS = 100_000
MAX_REPORTED_ERRORS = 100
STALE_AFTER = timedelta(seconds=int(os.environ.get("STUDIO_JOB_STALE_SECONDS", "120")))


# --- targets ---------------------------------------------------------------------------


@transaction.atomic
def model_target_create(
    *,
    actor: User,
    squad: Squad | None,
    name: str,
    request: HttpRequest | None = None,
    **fields: Any,
) -> ModelTarget:
    """A squad's target (owners) or a global one (staff)."""
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
    audit_log(
        actor=actor,
        action="generation.target_created",
        squad=squad,
        target=target,
        data={"name": name, "kind": target.kind, "base_url": target.base_url},
        request=request,
    )
    return target


# --- shared execution ----------------------------------------------------------------


def _spec(target: ModelTarget):  # -> TargetSpec (imported lazily: workers.runtime)
    from workers.runtime.backends import TargetSpec

    return TargetSpec(
        name=target.name,
        kind=target.kind,
        base_model=target.base_model,
        base_url=target.base_url,
        remote_model=target.remote_model,
        token_env=target.token_env,
        adapter_id=target.adapter_id,
        adapter_dir=target.lora_adapter.path if target.lora_adapter_id else "",
    )


def _param_values(
    version: PromptVersion, target: ModelTarget, cap: int | None = None
) -> dict[str, Any]:
    """The generation parameters; `cap` is the policy's maximum output tokens."""
    merged = {**(target.default_params or {}), **version.model_settings}
    max_new_tokens = int(merged["max_new_tokens"])
    return {
        "max_new_tokens": min(max_new_tokens, cap) if cap else max_new_tokens,
        "temperature": float(merged["temperature"]),
        "top_p": float(merged["top_p"]),
        "stop": list(merged.get("stop") or ()),
        "seed": merged.get("seed"),
    }


def _params(version: PromptVersion, target: ModelTarget, cap: int | None = None):
    from workers.runtime import GenerationParams

    values = _param_values(version, target, cap)
    return GenerationParams(**{**values, "stop": tuple(values["stop"])})


def _cost(target: ModelTarget, input_tokens: int, output_tokens: int) -> Decimal:
    return (
        Decimal(input_tokens) / 1000 * target.price_input_per_1k
        + Decimal(output_tokens) / 1000 * target.price_output_per_1k
    )


@dataclass
class RowOutcome:
    status: str
    target: ModelTarget
    output_text: str = ""
    output_json: Any = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    latency_ms: int = 0


def execute_rows(
    version: PromptVersion,
    target: ModelTarget,
    conversations: list[list[dict[str, str]]],
    *,
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
    max_new_tokens_cap: int | None = None,
) -> list[RowOutcome]:
    """Run rendered conversations; enforce the output contract; fall back when configured.

    Pass 1 runs every row on the target in batches. JSON prompts whose answer does not
    parse or validate get one repair request (the errors fed back), batched. Rows still
    invalid, or failed, run once on the fallback target when the version names one.
    """
    from workers.runtime import BackendError
    from workers.runtime.backends import run_conversations

    wants_json = version.output_format == PromptVersion.OutputFormat.JSON
    schema = version.output_schema
    outcomes = [RowOutcome(status=Generation.Status.FAILED, target=target) for _ in conversations]

    def run(t: ModelTarget, convs: list[list[dict[str, str]]], progress=None) -> list[Any]:
        started = time.monotonic()
        results = run_conversations(
            _spec(t),
            convs,
            _params(version, t, max_new_tokens_cap),
            batch_size=batch_size,
            on_progress=progress,
        )
        per_row_ms = int((time.monotonic() - started) * 1000 / max(len(convs), 1))
        return [(r, per_row_ms) for r in results]

    def record(i: int, t: ModelTarget, kind: str, result: Any, ms: int) -> bool:
        """Store one attempt on row i; True when the row is done (ok)."""
        o = outcomes[i]
        o.latency_ms += ms
        if isinstance(result, BackendError):
            o.attempts.append({"target": t.name, "kind": kind, "error": str(result)})
            o.status, o.target = Generation.Status.FAILED, t
            o.errors = [{"path": "", "message": str(result)}]
            return False
        o.input_tokens += result.input_tokens
        o.output_tokens += result.output_tokens
        o.cost += _cost(t, result.input_tokens, result.output_tokens)
        o.output_text, o.target = result.text, t
        attempt = {"target": t.name, "kind": kind, "finish_reason": result.finish_reason}
        if not wants_json:
            o.status, o.errors = Generation.Status.OK, []
            o.attempts.append(attempt)
            return True
        value, errors = structured.check_output(result.text, schema)
        attempt["errors"] = errors
        o.attempts.append(attempt)
        if errors:
            o.status, o.errors, o.output_json = Generation.Status.INVALID, errors, None
            return False
        o.status, o.errors, o.output_json = Generation.Status.OK, [], value
        return True

    first = run(target, conversations, on_progress)
    pending = [i for i, (r, ms) in enumerate(first) if not record(i, target, "first", r, ms)]
    repairable = [i for i in pending if outcomes[i].status == Generation.Status.INVALID]
    if repairable:
        repairs = [
            structured.repair_conversation(
                conversations[i], outcomes[i].output_text, outcomes[i].errors, schema
            )
            for i in repairable
        ]
        for i, (r, ms) in zip(repairable, run(target, repairs), strict=True):
            record(i, target, "repair", r, ms)
    still = [i for i in pending if outcomes[i].status != Generation.Status.OK]
    if still and version.fallback_target:
        try:
            fallback = target_resolve(
                squad_id=version.template.squad_id, name=version.fallback_target
            )
        except Exception as exc:
            for i in still:
                outcomes[i].attempts.append(
                    {"target": version.fallback_target, "kind": "fallback", "error": str(exc)}
                )
        else:
            rows = [conversations[i] for i in still]
            for i, (r, ms) in zip(still, run(fallback, rows), strict=True):
                record(i, fallback, "fallback", r, ms)
    return outcomes


def _render(version: PromptVersion, variables: dict[str, Any]) -> tuple[list[dict], str]:
    messages = render_messages(version.messages, version.input_schema, variables)
    digest = hashlib.sha256(
        json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    return messages, digest


# --- governance: one check before the call, one after, for every path ------------------


@dataclass
class Prepared:
    """Variables and messages as the policy lets them through (redacted), and why."""

    policy: PolicyVersion | None
    variables: Any
    messages: list[dict[str, str]]
    digest: str
    findings: list[dict[str, Any]]

    @property
    def blocked(self) -> bool:
        return any(f["action"] == "block" for f in self.findings)


def _prepare(version: PromptVersion, variables: Any, policy: PolicyVersion | None) -> Prepared:
    """Before generation: the policy on the variables and the rendered messages. Call
    after the variables passed the input schema; redacted values are rendered as they
    are (a redaction that breaks the schema, e.g. format: email, blocks the call)."""
    try:
        checked = governance.check_input(
            rules_of(policy),
            variables,
            render=lambda v: render_messages(version.messages, version.input_schema, v),
            wants_json=version.output_format == PromptVersion.OutputFormat.JSON,
            has_output_schema=bool(version.output_schema),
        )
    except RenderFailed as exc:
        finding = {
            "stage": "input",
            "rule": "redaction",
            "type": "breaks_input_schema",
            "where": "variables",
            "start": 0,
            "end": 0,
            "action": "block",
            "detail": exc.message,
        }
        return Prepared(policy, variables, [], "", [finding])
    digest = hashlib.sha256(
        json.dumps(checked.messages, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    return Prepared(policy, checked.variables, checked.messages, digest, checked.findings)


def _blocked_message(policy: PolicyVersion | None, findings: list[dict[str, Any]]) -> str:
    where = f"policy v{policy.number}" if policy else "the default policy"
    stopped = [f for f in findings if f["action"] == "block"]
    return f"Blocked by the squad's governance {where}: {governance.summary(stopped)}."


def _block(
    generation: Generation, prepared: Prepared, version: PromptVersion, target: ModelTarget
) -> None:
    """A call the policy stopped before generation: nothing was sent to a model."""
    generation.status = Generation.Status.BLOCKED
    generation.errors = [
        {"path": "", "message": _blocked_message(prepared.policy, prepared.findings)}
    ]
    generation.finished_at = timezone.now()
    _seal(generation, version, target, prepared.policy)


def _check_output(generation: Generation, policy: PolicyVersion | None) -> None:
    """After generation: PII and blocked terms in the output (redact, flag or block)."""
    rules = rules_of(policy)
    checked = governance.check_output(rules, generation.output_text)
    if not checked.findings:
        return
    generation.findings = [*generation.findings, *checked.findings]
    if checked.blocked:
        generation.status = Generation.Status.BLOCKED
        generation.output_text, generation.output_json = "", None
        generation.errors = [{"path": "", "message": _blocked_message(policy, checked.findings)}]
    elif checked.text != generation.output_text:
        generation.output_text = checked.text
        if generation.output_json is not None:
            generation.output_json = governance.redact_value(generation.output_json, rules)


def adapter_identity(target: ModelTarget) -> str:
    """The adapter a target generates with, as Generation.adapter and the provenance
    manifest name it: a local target's trained adapter as `adapter-<id>@sha256:<hash of
    its files>` (the name its export unpacks to, and its Adapter.sha256), a remote
    target's TGI `adapter_id`, else ""."""
    if target.lora_adapter_id:
        return f"adapter-{target.lora_adapter_id}@sha256:{target.lora_adapter.sha256}"
    return target.adapter_id


def _seal(
    generation: Generation,
    version: PromptVersion,
    target: ModelTarget,
    policy: PolicyVersion | None,
) -> None:
    """Sign the generation's provenance manifest (HMAC, apps.governance.provenance)."""
    generation.adapter = adapter_identity(target)
    signed = provenance.sign(
        provenance.manifest_build(
            squad_id=generation.squad_id,
            prompt={
                "template": version.template.slug,
                "version": version.number,
                "content_hash": version.content_hash,
            },
            target={
                "name": target.name,
                "kind": target.kind,
                "model": target.base_model or target.remote_model,
            },
            adapter=generation.adapter or None,
            parameters=_param_values(version, target, rules_of(policy)["max_output_tokens"]),
            variables=generation.variables,
            input_sha256=generation.rendered_hash,
            output_text=generation.output_text,
            status=generation.status,
            policy_version=policy.number if policy else None,
            created_at=(generation.finished_at or generation.created_at).isoformat(),
        )
    )
    generation.provenance = signed.manifest
    generation.provenance_signature = signed.signature
    generation.provenance_key_id = signed.key_id


def _apply(
    generation: Generation,
    outcome: RowOutcome,
    version: PromptVersion,
    policy: PolicyVersion | None,
) -> None:
    generation.status = outcome.status
    generation.target_used = outcome.target.name
    generation.output_text = outcome.output_text
    generation.output_json = outcome.output_json
    generation.errors = outcome.errors
    generation.attempts = outcome.attempts
    generation.input_tokens = outcome.input_tokens
    generation.output_tokens = outcome.output_tokens
    generation.cost = outcome.cost
    generation.latency_ms = outcome.latency_ms
    generation.finished_at = timezone.now()
    if outcome.output_text:
        _check_output(generation, policy)
    _seal(generation, version, outcome.target, policy)


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
    _render(version, variables)  # RenderFailed (422) lists every variable error
    # Only what the policy lets through is stored: redacted variables, never the originals.
    prepared = _prepare(version, variables, policy_version_current(squad_id=squad.pk))
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
        _block(generation, prepared, version, target)
        generation.save()
        generations_finished([generation], prompt=version.template.slug, target=target.name)
        return generation
    generation.save()
    from workers.tasks import run_generation

    transaction.on_commit(lambda: run_generation.delay(generation.pk))
    return generation


def generation_run(*, generation_id: int) -> Generation:
    """Worker side. Idempotent: a finished generation is left as it is."""
    with transaction.atomic():
        generation = (
            Generation.objects.select_for_update()
            # Not policy_version: PostgreSQL refuses FOR UPDATE on a nullable outer join.
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
        messages = _prepare(version, generation.variables, policy).messages
        outcome = execute_rows(
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
    _apply(generation, outcome, version, policy)
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
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    except RecursionError:
        raise RowError(f"column {column}: nested too deeply") from None
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
    from workers.tasks import run_batch_job

    transaction.on_commit(lambda: run_batch_job.delay(job.pk))
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
    require_squad_permission(actor, job.squad, RUN_GENERATION)
    job = BatchJob.objects.select_for_update().get(pk=job.pk)
    if job.finished:
        raise Conflict(f"Batch {job.pk} already {job.status}.", field="status")
    job.cancel_requested = True
    if job.status == BatchJob.Status.QUEUED:
        job.status = BatchJob.Status.CANCELLED
        job.finished_at = timezone.now()
        transaction.on_commit(lambda: job_finished("batch", BatchJob.Status.CANCELLED, 0.0))
    job.save(update_fields=["cancel_requested", "status", "finished_at"])
    audit_log(
        actor=actor,
        action="generation.batch_cancel_requested",
        squad=job.squad,
        target=job,
        data={"rows_done": job.rows_done, "rows_total": job.rows_total},
        request=request,
    )
    if job.status == BatchJob.Status.CANCELLED:
        webhooks.batch_job_finished(job=job)
    return job


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


JobT = TypeVar("JobT", bound=models.Model)


def claim_job(jobs: QuerySet[JobT], job_id: int) -> JobT | None:
    """Take a job row (a BatchJob or a FineTuneJob: status, worker, heartbeat_at, attempts,
    started_at) for this worker process if nobody live holds it (no heartbeat within
    STALE_AFTER). Only the job's own row is locked, whatever `jobs` joins."""
    with transaction.atomic():
        job = jobs.select_for_update(of=("self",)).get(pk=job_id)
        if job.finished:
            return None
        now = timezone.now()
        running = type(job).Status.RUNNING
        held = (
            job.status == running
            and job.worker != _worker_name()
            and job.heartbeat_at is not None
            and now - job.heartbeat_at < STALE_AFTER
        )
        if held:
            return None
        job.status = running
        job.worker = _worker_name()
        job.heartbeat_at = now
        job.attempts += 1
        job.started_at = job.started_at or now
        job.save(update_fields=["status", "worker", "heartbeat_at", "attempts", "started_at"])
        return job


def _claim(job_id: int) -> BatchJob | None:
    jobs = BatchJob.objects.select_related("prompt_version__template", "target", "squad")
    return claim_job(jobs, job_id)


def _finish(job: BatchJob, status: str, error: str = "") -> None:
    with transaction.atomic():
        BatchJob.objects.filter(pk=job.pk).update(
            status=status,
            error=error[:5000],
            finished_at=timezone.now(),
            heartbeat_at=timezone.now(),
        )
        job.refresh_from_db()
        audit_log(
            actor=None,
            action="generation.batch_finished",
            squad=job.squad,
            target=job,
            data={
                "status": status,
                "rows_done": job.rows_done,
                "rows_total": job.rows_total,
                "error": error[:500],
            },
        )
        webhooks.batch_job_finished(job=job)
    started = job.started_at or job.finished_at
    job_finished("batch", status, (job.finished_at - started).total_seconds())


def batch_job_run(*, job_id: int) -> BatchJob | None:
    """Worker side. Resumable and idempotent: rows that already have a Generation are
    skipped, and the unique (job, row) constraint makes a second writer harmless."""
    job = _claim(job_id)
    if job is None:
        return None
    version, target = job.prompt_version, job.target
    bind_generation(version, target)
    try:
        rows = _read_rows(job.rows_path)
    except OSError as exc:
        _finish(job, BatchJob.Status.FAILED, f"rows file unreadable: {exc}")
        return job
    done = set(job.generations.values_list("row_index", flat=True))
    policy = policy_version_current(squad_id=job.squad_id)
    cap = rules_of(policy)["max_output_tokens"]
    todo, blocked = [], []
    for index, (variables, redactions) in enumerate(rows):
        if index in done:
            continue
        prepared = _prepare(version, variables, policy)
        prepared.findings = [*redactions, *prepared.findings]
        (blocked if prepared.blocked else todo).append((index, prepared))
    # Length-sorted: rows of similar length share a batch, so little padding is wasted.
    todo.sort(key=lambda item: sum(len(m["content"]) for m in item[1].messages))
    chunk_size = job.batch_size * 4
    try:
        if blocked:
            stopped = [_row_generation(job, index, prepared) for index, prepared in blocked]
            for generation, (_, prepared) in zip(stopped, blocked, strict=True):
                _block(generation, prepared, version, target)
            _store_chunk(job, stopped, 0.0)
        for start in range(0, len(todo), chunk_size):
            if BatchJob.objects.filter(pk=job.pk, cancel_requested=True).exists():
                _finish(job, BatchJob.Status.CANCELLED)
                return job
            chunk = todo[start : start + chunk_size]
            began = time.monotonic()
            outcomes = execute_rows(
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
                _apply(generation, outcome, version, policy)
                generations.append(generation)
            _store_chunk(job, generations, elapsed)
    except Exception as exc:
        _finish(job, BatchJob.Status.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    _finish(job, BatchJob.Status.SUCCEEDED)
    return job


def _row_generation(job: BatchJob, index: int, prepared: Prepared) -> Generation:
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


def _store_chunk(job: BatchJob, generations: list[Generation], elapsed: float) -> None:
    tokens = sum(g.output_tokens for g in generations)
    with transaction.atomic():
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
        rows_done = Generation.objects.filter(batch_job=job).count()
        BatchJob.objects.filter(pk=job.pk).update(
            rows_done=rows_done,
            output_tokens=job.output_tokens + tokens,
            generation_seconds=job.generation_seconds + elapsed,
            heartbeat_at=timezone.now(),
        )
    generations_finished(created, prompt=job.prompt_version.template.slug, target=job.target.name)
    job.output_tokens += tokens
    job.generation_seconds += elapsed


def batch_jobs_recover() -> list[int]:
    """Requeue running jobs whose worker stopped beating (killed, machine lost)."""
    from workers.tasks import run_batch_job

    cutoff = timezone.now() - STALE_AFTER
    stale = list(
        BatchJob.objects.filter(
            status=BatchJob.Status.RUNNING, heartbeat_at__lt=cutoff
        ).values_list("pk", flat=True)
    )
    for job_id in stale:
        run_batch_job.delay(job_id)
    return stale
