"""The one generation path every kind of call shares (playground and API calls, batch
jobs, eval runs): governance before the call (`prepare`, `block`), the model call with the
output contract, one repair and the fallback target (`execute_rows`), governance after
it and the signed provenance manifest (`apply_outcome`). The runtime (workers.runtime)
is imported lazily, inside functions: the web process never loads torch.
"""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.utils import timezone

from apps.basemodels.selectors import DEFAULT_BASE_MODEL
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.generation import structured
from apps.generation.models import Generation, ModelTarget
from apps.generation.targets import target_resolve, token_env_allowed, token_env_refusal
from apps.governance import checks as governance
from apps.governance import provenance
from apps.governance.models import PolicyVersion
from apps.governance.selectors import rules_of
from apps.prompts.contracts import RenderFailed, render_messages
from apps.prompts.models import PromptVersion


def target_spec(target: ModelTarget):  # -> TargetSpec (imported lazily: workers.runtime)
    """What the runtime needs of `target`. A local target's base model must be ready in
    the registry (ValidationFailed otherwise); the runtime is given its registration's
    manifest hash, which it checks the files and any adapter against."""
    from apps.basemodels.selectors import base_model_ready
    from workers.runtime.backends import TargetSpec

    base_sha256 = ""
    if target.kind == ModelTarget.Kind.LOCAL:
        base_sha256 = base_model_ready(target.base_model or DEFAULT_BASE_MODEL).manifest_sha256
    if target.token_env and not token_env_allowed(target.token_env):
        # A target saved before the rule, or under another setting: its token stays home.
        raise ValidationFailed(token_env_refusal(target.token_env), field="token_env")
    return TargetSpec(
        name=target.name,
        kind=target.kind,
        base_model=target.base_model,
        base_model_sha256=base_sha256,
        base_url=target.base_url,
        remote_model=target.remote_model,
        token_env=target.token_env,
        adapter_id=target.adapter_id,
        adapter_dir=target.lora_adapter.path if target.lora_adapter_id else "",
    )


def report_changed_models(outcomes: list[Any]) -> None:
    """A base model whose files changed since registration refused to load: record it
    in the registry (the version becomes `changed`, audited) once per call."""
    from apps.basemodels.services import base_model_files_changed
    from workers.runtime.registry import ModelFilesChanged

    seen = set()
    for outcome in outcomes:
        if isinstance(outcome, ModelFilesChanged) and outcome.model not in seen:
            seen.add(outcome.model)
            base_model_files_changed(
                name=outcome.model,
                manifest_sha256=outcome.manifest_sha256,
                problems=outcome.problems,
            )


def param_values(
    version: PromptVersion,
    target: ModelTarget,
    cap: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The generation parameters; `cap` is the policy's maximum output tokens;
    `overrides` what a gateway caller may set (apps.gateway.protocol), applied last."""
    merged = {**(target.default_params or {}), **version.model_settings, **(overrides or {})}
    max_new_tokens = int(merged["max_new_tokens"])
    return {
        "max_new_tokens": min(max_new_tokens, cap) if cap else max_new_tokens,
        "temperature": float(merged["temperature"]),
        "top_p": float(merged["top_p"]),
        "stop": list(merged.get("stop") or ()),
        "seed": merged.get("seed"),
    }


def _params(
    version: PromptVersion,
    target: ModelTarget,
    cap: int | None = None,
    overrides: dict[str, Any] | None = None,
):
    from workers.runtime import GenerationParams

    values = param_values(version, target, cap, overrides)
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
    overrides: dict[str, Any] | None = None,
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
        try:
            spec = target_spec(t)
        except ApplicationError as exc:
            return [(BackendError(exc.message), 0) for _ in convs]
        results = run_conversations(
            spec,
            convs,
            _params(version, t, max_new_tokens_cap, overrides),
            batch_size=batch_size,
            on_progress=progress,
        )
        report_changed_models(results)
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


def stream_row(
    version: PromptVersion,
    target: ModelTarget,
    messages: list[dict[str, str]],
    *,
    max_new_tokens_cap: int | None = None,
    overrides: dict[str, Any] | None = None,
):  # -> Iterator[StreamDelta] (workers.runtime, imported lazily)
    """One conversation streamed from the target with the same parameters `execute_rows`
    would use; no repair or fallback (text is already on its way to the caller)."""
    from workers.runtime.backends import stream_conversation
    from workers.runtime.registry import ModelFilesChanged

    deltas = stream_conversation(
        target_spec(target), messages, _params(version, target, max_new_tokens_cap, overrides)
    )
    try:
        yield from deltas
    except ModelFilesChanged as exc:
        report_changed_models([exc])
        raise
    finally:
        deltas.close()


def stream_plan(
    version: PromptVersion,
    target: ModelTarget,
    *,
    max_new_tokens_cap: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[Any, Any]:  # (TargetSpec, GenerationParams)
    """What `astream_row` needs, resolved here (database reads) before an async stream
    starts: the target's spec and the generation parameters `stream_row` would use."""
    return target_spec(target), _params(version, target, max_new_tokens_cap, overrides)


async def astream_row(spec: Any, params: Any, messages: list[dict[str, str]]):
    """`stream_row` over an async connection (the gateway under ASGI), from a
    `stream_plan`; a model whose files changed is recorded from a thread (database
    work). -> AsyncIterator[StreamDelta]"""
    from asgiref.sync import sync_to_async

    from workers.runtime.backends import astream_conversation
    from workers.runtime.registry import ModelFilesChanged

    deltas = astream_conversation(spec, messages, params)
    try:
        async for delta in deltas:
            yield delta
    except ModelFilesChanged as exc:
        await sync_to_async(_report_changed_closing, thread_sensitive=False)(exc)
        raise
    finally:
        await deltas.aclose()


def _report_changed_closing(exc: Exception) -> None:
    from django.db import connections

    try:
        report_changed_models([exc])
    finally:
        connections.close_all()


def render(version: PromptVersion, variables: dict[str, Any]) -> tuple[list[dict], str]:
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


def prepare(version: PromptVersion, variables: Any, policy: PolicyVersion | None) -> Prepared:
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


def prepare_conversation(
    messages: list[dict[str, str]],
    policy: PolicyVersion | None,
    *,
    wants_json: bool,
    has_output_schema: bool,
) -> Prepared:
    """Before generation, for messages a caller sent as they are (the gateway): the same
    input checks as `prepare`, with the messages as the variables (stored redacted as
    {"messages": [...]})."""
    checked = governance.check_input(
        rules_of(policy),
        {"messages": messages},
        render=lambda v: v["messages"],
        wants_json=wants_json,
        has_output_schema=has_output_schema,
    )
    digest = hashlib.sha256(
        json.dumps(checked.messages, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    return Prepared(policy, checked.variables, checked.messages, digest, checked.findings)


def blocked_message(policy: PolicyVersion | None, findings: list[dict[str, Any]]) -> str:
    return _blocked_message(policy, findings)


def block(
    generation: Generation,
    prepared: Prepared,
    version: PromptVersion,
    target: ModelTarget,
    overrides: dict[str, Any] | None = None,
) -> None:
    """A call the policy stopped before generation: nothing was sent to a model."""
    generation.status = Generation.Status.BLOCKED
    generation.errors = [
        {"path": "", "message": _blocked_message(prepared.policy, prepared.findings)}
    ]
    generation.finished_at = timezone.now()
    seal(generation, version, target, prepared.policy, overrides)


def check_output(generation: Generation, policy: PolicyVersion | None) -> None:
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


def seal(
    generation: Generation,
    version: PromptVersion,
    target: ModelTarget,
    policy: PolicyVersion | None,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Sign the generation's provenance manifest (HMAC, apps.governance.provenance).
    A gateway call naming a target has no saved version: `version.number` is 0."""
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
            parameters=param_values(
                version, target, rules_of(policy)["max_output_tokens"], overrides
            ),
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


def apply_outcome(
    generation: Generation,
    outcome: RowOutcome,
    version: PromptVersion,
    policy: PolicyVersion | None,
    overrides: dict[str, Any] | None = None,
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
        check_output(generation, policy)
    seal(generation, version, outcome.target, policy, overrides)
