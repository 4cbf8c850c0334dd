"""One gateway call, through the shared generation path (apps.generation.pipeline).

`prepare_call` resolves what `model` names inside the key's squad and scope (404 for
anything else, another squad's included), checks the request against the version or the
target, applies the squad's input policy (`pipeline.prepare` for a prompt's variables,
`pipeline.prepare_conversation` for caller messages) and reserves quota. `complete` runs
the model through `pipeline.execute_rows` (output contract, one repair, fallback target),
applies the output rules and seals the provenance manifest (`pipeline.apply_outcome`),
saves one Generation (source `gateway`) and settles the quota.

What a caller may set (documented in the README):
- model naming a target: the caller's messages go to the model as they are (after the
  input policy); max_tokens / max_completion_tokens, temperature, top_p, stop, seed and
  response_format (json_object, json_schema: validated, with the repair step) apply.
- model naming a prompt: the version's rendered messages come first, the caller's
  `messages` (user and assistant only) are appended after them for multi-turn use;
  `variables` are checked against the input schema; max_tokens may only lower the
  version's max_new_tokens; stop sequences are added to the version's; seed is taken;
  temperature and top_p must equal the version's (or be left out); response_format may
  only repeat what the version declares (the version's output contract applies).
"""

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from apps.core.exceptions import NotFound
from apps.gateway import quotas, response_cache
from apps.gateway.protocol import ChatRequest, GatewayError, bad, provenance_header
from apps.gateway.services import KeyGrant
from apps.generation import pipeline
from apps.generation.models import Generation, ModelTarget
from apps.generation.targets import clean_default_params, target_resolve
from apps.governance.models import PolicyVersion
from apps.governance.selectors import policy_version_current, rules_of
from apps.prompts.contracts import RenderFailed
from apps.prompts.models import Label, PromptTemplate, PromptVersion
from apps.telemetry.context import request_context
from apps.telemetry.recording import bind_generation, generations_finished

DEFAULT_MAX_TOKENS = 256


def not_found(model: str) -> GatewayError:
    return GatewayError(
        f"The model '{model[:120]}' does not exist or this key may not use it.",
        status=404,
        param="model",
        code="model_not_found",
    )


@dataclass
class Call:
    grant: KeyGrant
    request: ChatRequest
    target: ModelTarget
    version: PromptVersion  # saved (prompt model) or built for this call (target model)
    saved: bool
    policy: PolicyVersion | None
    overrides: dict[str, Any]
    prepared: pipeline.Prepared
    caller_messages: list[dict[str, str]]
    generation: Generation
    reservation: quotas.Reservation | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.prepared.messages + self.caller_messages

    @property
    def wants_json(self) -> bool:
        return self.version.output_format == PromptVersion.OutputFormat.JSON

    @property
    def prompt_slug(self) -> str:
        return self.version.template.slug if self.saved else ""


# --- what `model` names ---------------------------------------------------------------------


def _prompt_version(grant: KeyGrant, req: ChatRequest) -> PromptVersion:
    ref = req.model
    if not grant.may_use_prompt(ref.prompt):
        raise not_found(req.model_name)
    if ref.number is not None:
        version = (
            PromptVersion.objects.select_related("template__squad")
            .filter(template__squad_id=grant.squad_id, template__slug=ref.prompt, number=ref.number)
            .first()
        )
    else:
        label = (
            Label.objects.select_related("version__template__squad")
            .filter(template__squad_id=grant.squad_id, template__slug=ref.prompt, name=ref.label)
            .first()
        )
        version = label.version if label else None
    if version is None:
        raise not_found(req.model_name)
    return version


def _target(grant: KeyGrant, name: str, model: str) -> ModelTarget:
    try:
        return target_resolve(squad_id=grant.squad_id, name=name)
    except NotFound:
        raise not_found(model) from None


def _prompt_overrides(version: PromptVersion, req: ChatRequest) -> dict[str, Any]:
    settings = version.model_settings
    for name in ("temperature", "top_p"):
        value = getattr(req, name)
        if value is not None and float(settings.get(name, -1)) != value:
            raise bad(
                f"A prompt model runs with its version's {name} ({settings.get(name)}); "
                f"leave '{name}' out or send the same value.",
                name,
            )
    wants_json = version.output_format == PromptVersion.OutputFormat.JSON
    if req.response_type == "json_schema" or (
        req.response_type == "json_object" and not wants_json
    ):
        raise bad(
            "A prompt model answers in its version's output format and contract; "
            "leave response_format out.",
            "response_format",
        )
    overrides: dict[str, Any] = {}
    if req.max_tokens is not None:
        overrides["max_new_tokens"] = min(int(settings["max_new_tokens"]), req.max_tokens)
    if req.stop:
        overrides["stop"] = [*(settings.get("stop") or []), *req.stop]
    if req.seed is not None:
        overrides["seed"] = req.seed
    return overrides


def _call_version(squad_id: int, target: ModelTarget, req: ChatRequest) -> PromptVersion:
    """An unsaved version standing for a call that names a target: no messages of its own,
    the caller's response_format as its output contract, the caller's parameters."""
    defaults = clean_default_params(target.default_params)  # one saved before the rules
    settings = {
        "target": target.name,
        "max_new_tokens": req.max_tokens or int(defaults.get("max_new_tokens", DEFAULT_MAX_TOKENS)),
        "temperature": req.temperature
        if req.temperature is not None
        else float(defaults.get("temperature", 1.0)),
        "top_p": req.top_p if req.top_p is not None else float(defaults.get("top_p", 1.0)),
        "stop": req.stop,
        "seed": req.seed,
    }
    wants_json = req.response_type in ("json_object", "json_schema")
    return PromptVersion(
        template=PromptTemplate(squad_id=squad_id, slug=""),
        number=0,
        messages=[],
        input_schema={},
        output_schema=req.response_schema,
        output_format=PromptVersion.OutputFormat.JSON
        if wants_json
        else PromptVersion.OutputFormat.TEXT,
        model_settings=settings,
        fallback_target="",
        content_hash="",
    )


def _variable_error(exc: RenderFailed) -> GatewayError:
    errors = exc.extra or []
    first = errors[0]["path"].replace("$", "variables", 1) if errors else "variables"
    return GatewayError(
        f"The variables do not match the prompt's input schema: {exc.message}",
        param=first,
        code="invalid_variables",
    )


# --- before the upstream call ----------------------------------------------------------------


def prepare_call(*, grant: KeyGrant, req: ChatRequest, request: HttpRequest | None) -> Call:
    """Resolve, check, apply the input policy. Raises GatewayError (nothing reserved)."""
    if req.model.is_prompt:
        version = _prompt_version(grant, req)
        target = _target(grant, version.model_settings["target"], req.model_name)
        overrides = _prompt_overrides(version, req)
        if any(m["role"] == "system" for m in req.messages):
            raise bad(
                "A prompt model's system messages are its version's; send user and "
                "assistant messages only (they are appended after the rendered ones).",
                "messages",
            )
        saved = True
    else:
        if not grant.may_use_target(req.model.target):
            raise not_found(req.model_name)
        target = _target(grant, req.model.target, req.model_name)
        version = _call_version(grant.squad_id, target, req)
        overrides = {}
        saved = False
    bind_generation(version, target)
    policy = policy_version_current(squad_id=grant.squad_id)
    wants_json = version.output_format == PromptVersion.OutputFormat.JSON
    if saved:
        try:
            pipeline.render(version, req.variables)
        except RenderFailed as exc:
            raise _variable_error(exc) from None
        prepared = pipeline.prepare(version, req.variables, policy)
        extra = (
            pipeline.prepare_conversation(
                req.messages,
                policy,
                wants_json=wants_json,
                has_output_schema=bool(version.output_schema),
            )
            if req.messages
            else None
        )
    else:
        prepared = pipeline.prepare_conversation(
            req.messages,
            policy,
            wants_json=wants_json,
            has_output_schema=bool(version.output_schema),
        )
        extra = None
    findings = prepared.findings + [
        {**f, "where": f"request.{f['where']}"} for f in (extra.findings if extra else [])
    ]
    prepared.findings = findings
    generation = Generation(
        squad_id=grant.squad_id,
        prompt_version=version if saved else None,
        target=target,
        variables=prepared.variables,
        rendered_hash=prepared.digest,
        source=Generation.Source.GATEWAY,
        findings=findings,
        policy_version=policy,
        context=request_context(request),
        service_key_id=grant.key_id,
        end_user=req.user,
        metadata=req.metadata,
        request_messages=extra.messages if extra else [],
    )
    return Call(
        grant=grant,
        request=req,
        target=target,
        version=version,
        saved=saved,
        policy=policy,
        overrides=overrides,
        prepared=prepared,
        caller_messages=extra.messages if extra else [],
        generation=generation,
    )


def max_new_tokens(call: Call) -> int:
    values = pipeline.param_values(
        call.version, call.target, rules_of(call.policy)["max_output_tokens"], call.overrides
    )
    return int(values["max_new_tokens"])


def reserve(call: Call, *, streaming: bool = False) -> None:
    """Reserve quota for the worst case of this call: the first attempt, plus for a JSON
    contract one repair (the answer and the schema fed back), plus the fallback target."""
    out = max_new_tokens(call)
    prompt = quotas.estimate_prompt_tokens(call.messages)
    attempts = [(prompt, out)]
    if call.wants_json and not streaming:
        schema = len(json.dumps(call.version.output_schema or {}).encode())
        attempts.append((prompt + out * 4 + schema + 400, out))
    price_in, price_out = call.target.price_input_per_1k, call.target.price_output_per_1k
    if call.version.fallback_target and not streaming:
        try:
            fallback = target_resolve(
                squad_id=call.grant.squad_id, name=call.version.fallback_target
            )
        except NotFound:
            pass
        else:
            attempts.append((prompt, out))
            price_in = max(price_in, fallback.price_input_per_1k)
            price_out = max(price_out, fallback.price_output_per_1k)
    tokens_in = sum(a for a, _ in attempts)
    tokens_out = sum(b for _, b in attempts)
    try:
        call.reservation = quotas.reserve(
            squad_id=call.grant.squad_id,
            key_id=call.grant.key_id,
            tokens=tokens_in + tokens_out,
            cost=quotas.cost_of(tokens_in, tokens_out, price_in, price_out),
        )
    except quotas.QuotaRefused as exc:
        raise GatewayError(
            exc.message,
            status=429,
            kind="insufficient_quota" if exc.code == "insufficient_quota" else "requests",
            code=exc.code,
            headers={"Retry-After": str(exc.retry_after)},
        ) from None


def record_blocked(call: Call) -> Generation:
    """The input policy stopped the call: a `blocked` Generation, nothing sent upstream."""
    pipeline.block(call.generation, call.prepared, call.version, call.target, call.overrides)
    call.generation.save()
    if call.reservation is not None:
        quotas.release(call.reservation)
    generations_finished([call.generation], prompt=call.prompt_slug, target=call.target.name)
    return call.generation


def blocked_error(call: Call) -> GatewayError:
    return GatewayError(
        call.generation.errors[0]["message"],
        param="messages",
        code="content_policy_violation",
        headers=generation_headers(call.generation),
    )


# --- the upstream call and after ----------------------------------------------------------


def complete(call: Call) -> Generation:
    """Run the model through the shared path; save the Generation; settle the quota."""
    generation = call.generation
    try:
        outcome = pipeline.execute_rows(
            call.version,
            call.target,
            [call.messages],
            batch_size=1,
            max_new_tokens_cap=rules_of(call.policy)["max_output_tokens"],
            overrides=call.overrides,
        )[0]
    except Exception as exc:
        generation.status = Generation.Status.FAILED
        generation.errors = [{"path": "", "message": f"{type(exc).__name__}: {exc}"}]
        generation.finished_at = timezone.now()
        generation.latency_ms = int((time.monotonic() - call.started) * 1000)
        pipeline.seal(generation, call.version, call.target, call.policy, call.overrides)
        generation.save()
        finish_quota(call)
        generations_finished([generation], prompt=call.prompt_slug, target=call.target.name)
        return generation
    pipeline.apply_outcome(generation, outcome, call.version, call.policy, call.overrides)
    if call.wants_json and generation.output_json is not None:
        generation.output_text = json.dumps(generation.output_json, ensure_ascii=False)
    generation.save()
    finish_quota(call)
    generations_finished([generation], prompt=call.prompt_slug, target=call.target.name)
    return generation


def finish_quota(call: Call) -> None:
    """Settle with what the call used; a call that used nothing gives everything back."""
    if call.reservation is None:
        return
    g = call.generation
    if not g.input_tokens and not g.output_tokens:
        quotas.release(call.reservation)
    else:
        quotas.settle(
            call.reservation, tokens=g.input_tokens + g.output_tokens, cost=Decimal(g.cost)
        )


def generation_headers(generation: Generation) -> dict[str, str]:
    headers = {"X-Studio-Generation-Id": str(generation.pk)}
    if generation.provenance:
        headers["X-Studio-Provenance"] = provenance_header(
            generation.provenance, generation.provenance_signature, generation.provenance_key_id
        )
    return headers


def finish_reason(generation: Generation) -> str:
    if generation.status == Generation.Status.BLOCKED:
        return "content_filter"
    attempts = [a for a in generation.attempts if "finish_reason" in a]
    return attempts[-1]["finish_reason"] if attempts else "stop"


def outcome_error(generation: Generation) -> GatewayError | None:
    """The error answer for a call that did not produce an output, else None."""
    headers = generation_headers(generation)
    if generation.status == Generation.Status.INVALID:
        errors = "; ".join(f"{e['path']}: {e['message']}" for e in generation.errors[:5])
        return GatewayError(
            f"The model's answer does not meet the output contract after one repair: {errors}",
            status=422,
            code="output_contract_violation",
            headers=headers,
        )
    if generation.status == Generation.Status.FAILED:
        message = generation.errors[0]["message"] if generation.errors else "upstream failed"
        return GatewayError(
            f"The model call failed: {message}",
            status=502,
            kind="api_error",
            code="upstream_error",
            headers=headers,
        )
    return None


# --- the optional response cache -------------------------------------------------------------


@dataclass
class CacheSlot:
    key: str
    ttl: int
    bypass: bool


def cache_slot(call: Call, request: HttpRequest) -> CacheSlot | None:
    """Where this call's answer is cached, or None when its model has no rule or the call
    is not deterministic (or streams)."""
    if call.request.stream:
        return None
    name = f"prompt/{call.version.template.slug}" if call.saved else call.target.name
    ttl = response_cache.ttl_for(call.grant.squad_id, name)
    if not ttl:
        return None
    params = pipeline.param_values(
        call.version, call.target, rules_of(call.policy)["max_output_tokens"], call.overrides
    )
    if not response_cache.deterministic(params):
        return None
    identity = {
        "model": f"version:{call.version.pk}" if call.saved else f"target:{call.target.pk}",
        "messages": call.messages,
        "params": params,
        "format": call.version.output_format,
        "schema": call.version.output_schema,
    }
    bypass = request.headers.get(response_cache.BYPASS_HEADER, "").lower() == "bypass"
    return CacheSlot(response_cache.key_for(call.grant.squad_id, identity), ttl, bypass)


def cache_hit(call: Call, slot: CacheSlot) -> Generation | None:
    """The stored answer as this call's own Generation (no tokens, no cost), or None."""
    if slot.bypass:
        return None
    entry = response_cache.get(slot.key)
    if entry is None:
        return None
    generation = call.generation
    generation.status = Generation.Status.OK
    generation.target_used = entry["target_used"]
    generation.output_text = entry["content"]
    generation.output_json = entry.get("output_json")
    generation.attempts = [
        {
            "target": entry["target_used"],
            "kind": "cache",
            "generation": entry["generation_id"],
            "finish_reason": entry["finish_reason"],
        }
    ]
    generation.latency_ms = int((time.monotonic() - call.started) * 1000)
    generation.finished_at = timezone.now()
    pipeline.seal(generation, call.version, call.target, call.policy, call.overrides)
    generation.save()
    if call.reservation is not None:
        quotas.release(call.reservation)
    generations_finished([generation], prompt=call.prompt_slug, target=call.target.name)
    return generation


def cache_store(slot: CacheSlot, generation: Generation) -> None:
    if generation.status != Generation.Status.OK:
        return
    response_cache.put(
        slot.key,
        {
            "content": generation.output_text,
            "output_json": generation.output_json,
            "finish_reason": finish_reason(generation),
            "target_used": generation.target_used,
            "generation_id": generation.pk,
        },
        slot.ttl,
    )
