"""`stream: true`: Server-Sent Events in OpenAI's chunk shape, with governance on the way.

Input checks and the quota reservation happen before the first byte (apps.gateway.v1).
The Generation is saved as `running` first, so its id is in the response headers; it is
finished at the end with the usage. Output rules run as text arrives (`OutputGuard`):
only text that no rule can still change is sent — the last `hold` characters (the
longest PII value or blocked term a rule looks for) stay back until more text or the end
shows what they are — so a value split across chunks is redacted like any other, and a
blocked term or blocked PII type ends the stream with an error chunk before it is sent.
A client that goes away closes the generator: the upstream connection is closed (the
local server stops the row) and the record says `cancelled`.
"""

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.http import StreamingHttpResponse
from django.utils import timezone

from apps.gateway import protocol, quotas
from apps.gateway.completions import Call
from apps.generation import pipeline, structured
from apps.generation.models import Generation
from apps.governance import checks as governance
from apps.governance.selectors import rules_of
from apps.telemetry.recording import generations_finished

HOLD_CHARS = 64  # longer than any PII value the detectors match (cards, IBANs, phones)
CHECK_EVERY = 16  # characters of new text between checks of the held-back tail


class OutputGuard:
    """The output rules over a growing text: what may be sent now, and whether it must
    stop."""

    def __init__(self, rules: dict[str, Any]) -> None:
        self.rules = rules
        self.raw = ""
        self.sent = ""
        self.blocked: governance.Checked | None = None
        terms = rules["blocked_terms"] if rules["output_blocked_terms"] else []
        self.hold = max([HOLD_CHARS, *(len(t) + 1 for t in terms)])
        self._checked_at = 0

    def feed(self, text: str) -> str:
        """Add text; return what may be sent now ("" when blocked: see `blocked`)."""
        self.raw += text
        if len(self.raw) - self._checked_at < CHECK_EVERY:
            return ""
        return self._release(final=False)

    def finish(self) -> str:
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        self._checked_at = len(self.raw)
        checked = governance.check_output(self.rules, self.raw)
        if checked.blocked:
            self.blocked = checked
            return ""
        if final:
            ready = checked.text
        else:
            boundary = len(self.raw) - self.hold
            moved = True
            while moved:  # never cut through something a rule matched
                moved = False
                for f in checked.findings:
                    if f["start"] < boundary < f["end"]:
                        boundary, moved = f["start"], True
            if boundary <= 0:
                return ""
            ready = governance.check_output(self.rules, self.raw[:boundary]).text
        if not ready.startswith(self.sent):
            return ""
        out, self.sent = ready[len(self.sent) :], ready
        return out


def _sse(data: dict[str, Any] | str) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {body}\n\n".encode()


def _error_event(message: str, code: str, kind: str = "invalid_request_error") -> bytes:
    return _sse({"error": {"message": message, "type": kind, "param": None, "code": code}})


def stream_response(call: Call) -> StreamingHttpResponse:
    generation = call.generation
    generation.status = Generation.Status.RUNNING
    generation.save()
    response = StreamingHttpResponse(_events(call), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["X-Studio-Generation-Id"] = str(generation.pk)
    for name, value in (call.reservation.headers if call.reservation else {}).items():
        response[name] = value
    return response


def _events(call: Call) -> Iterator[bytes]:
    req, generation = call.request, call.generation
    guard = OutputGuard(rules_of(call.policy))
    cid, created = f"chatcmpl-{generation.pk}", int(time.time())

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage=None) -> bytes:
        return _sse(
            protocol.chunk(
                id=cid,
                model=req.model_name,
                created=created,
                delta=delta,
                finish_reason=finish,
                usage_=usage,
            )
        )

    deltas = None
    state: dict[str, Any] = {"finish": "stop", "in": None, "out": None, "pieces": 0}
    outcome = Generation.Status.CANCELLED  # until the stream reaches its end
    error: tuple[str, str] | None = None
    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        try:
            deltas = pipeline.stream_row(
                call.version,
                call.target,
                call.messages,
                max_new_tokens_cap=rules_of(call.policy)["max_output_tokens"],
                overrides=call.overrides,
            )
            for delta in deltas:
                if delta.text:
                    state["pieces"] += 1
                if delta.finish_reason:
                    state["finish"] = "length" if delta.finish_reason == "length" else "stop"
                if delta.input_tokens is not None:
                    state["in"], state["out"] = delta.input_tokens, delta.output_tokens
                text = guard.feed(delta.text) if delta.text else ""
                if guard.blocked:
                    break
                if text:
                    yield chunk({"content": text})
        except Exception as exc:  # the backend failed before or during the stream
            outcome = Generation.Status.FAILED
            error = (f"The model call failed: {type(exc).__name__}: {exc}", "upstream_error")
        else:
            tail = "" if guard.blocked else guard.finish()
            if guard.blocked:
                outcome = Generation.Status.BLOCKED
                message = pipeline.blocked_message(call.policy, guard.blocked.findings)
                error = (message, "content_policy_violation")
            else:
                if tail:
                    yield chunk({"content": tail})
                outcome = Generation.Status.OK
                if call.wants_json:
                    _, errors = structured.check_output(guard.sent, call.version.output_schema)
                    if errors:
                        outcome = Generation.Status.INVALID
                        listed = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
                        error = (
                            f"The model's answer does not meet the output contract: {listed}",
                            "output_contract_violation",
                        )
        # The record is complete before the last events go out: a client that has read
        # [DONE] finds it written.
        finished = True
        _finish(call, guard, outcome, error, state)
        if error is not None:
            yield _error_event(*error)
        else:
            yield chunk({}, state["finish"])
            if req.include_usage:
                yield chunk(None, usage=protocol.usage(*_usage(call, state)))
            yield b"data: [DONE]\n\n"
    finally:
        if deltas is not None:
            deltas.close()  # a client that left: the upstream connection closes too
        if not finished:
            _finish(call, guard, outcome, error, state)


def _usage(call: Call, state: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens as the server reported them; a server that reports no
    usage in streams (llama.cpp's) or a stream cut short: the prompt's upper-bound
    estimate and one token per piece of text received (servers send one per chunk)."""
    if state["in"] is not None:
        return int(state["in"]), int(state["out"] or 0)
    return quotas.estimate_prompt_tokens(call.messages), int(state["pieces"])


def _finish(
    call: Call,
    guard: OutputGuard,
    status: str,
    error: tuple[str, str] | None,
    state: dict[str, Any],
) -> None:
    generation = call.generation
    generation.status = status
    generation.target_used = call.target.name
    generation.latency_ms = int((time.monotonic() - call.started) * 1000)
    generation.finished_at = timezone.now()
    generation.input_tokens, generation.output_tokens = (
        (0, 0)
        if status == Generation.Status.FAILED and not state["pieces"] and state["in"] is None
        else _usage(call, state)
    )
    generation.cost = quotas.cost_of(
        generation.input_tokens,
        generation.output_tokens,
        call.target.price_input_per_1k,
        call.target.price_output_per_1k,
    )
    checked = governance.check_output(guard.rules, guard.raw) if guard.raw else None
    if checked is not None:
        generation.findings = [*generation.findings, *checked.findings]
    if status == Generation.Status.BLOCKED:
        generation.output_text = ""
    else:
        generation.output_text = (
            guard.sent
            if status == Generation.Status.CANCELLED
            else (checked.text if checked is not None else "")
        )
    if status == Generation.Status.OK and call.wants_json:
        generation.output_json = structured.check_output(
            generation.output_text, call.version.output_schema
        )[0]
    generation.errors = [{"path": "", "message": error[0]}] if error else []
    if status == Generation.Status.CANCELLED:
        generation.errors = [{"path": "", "message": "The client disconnected; stopped."}]
    generation.attempts = [
        {
            "target": call.target.name,
            "kind": "stream",
            "finish_reason": state["finish"],
            "usage": "reported" if state["in"] is not None else "estimated",
        }
    ]
    pipeline.seal(generation, call.version, call.target, call.policy, call.overrides)
    generation.save()
    if call.reservation is not None:
        if status == Generation.Status.FAILED and not state["pieces"]:
            quotas.release(call.reservation)
        else:
            quotas.settle(
                call.reservation,
                tokens=generation.input_tokens + generation.output_tokens,
                cost=Decimal(generation.cost),
            )
    generations_finished([generation], prompt=call.prompt_slug, target=call.target.name)
