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
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from asgiref.sync import SyncToAsync, sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone

from apps.gateway import protocol, quotas
from apps.gateway.completions import Call
from apps.generation import pipeline, structured
from apps.generation.models import Generation
from apps.governance import checks as governance
from apps.governance.selectors import rules_of
from apps.telemetry.recording import generations_finished

if TYPE_CHECKING:
    from workers.runtime import StreamDelta

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


def stream_response(call: Call, request: HttpRequest) -> StreamingHttpResponse:
    """The SSE response. Under ASGI its body is an async generator reading an async
    upstream connection: a stream waiting for the model holds no thread, so one server
    process keeps hundreds of streams open (docs/benchmarks.md, "200 concurrent
    streams"). Under WSGI (Django's test client, a threaded server) the same session runs
    in a plain generator."""
    generation = call.generation
    generation.status = Generation.Status.RUNNING
    generation.save()
    session = StreamSession(call)
    if isinstance(request, ASGIRequest):
        try:
            # Resolved here, in the request's thread: the async stream reads no database.
            session.plan = pipeline.stream_plan(
                call.version, call.target, **session.upstream_kwargs()
            )
        except Exception as exc:
            session.failed(exc)
        content = _async_events(session)
    else:
        content = _sync_events(session)
    response = _SessionResponse(session, content, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["X-Studio-Generation-Id"] = str(generation.pk)
    for name, value in (call.reservation.headers if call.reservation else {}).items():
        response[name] = value
    return response


class _SessionResponse(StreamingHttpResponse):
    """Closing the response ends the session: a client that left before the first event
    (its generator never started, so its `finally` never runs) is recorded `cancelled`
    and its reservation settled. A no-op once the stream has written its record."""

    def __init__(self, session: "StreamSession", *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session = session

    def close(self) -> None:
        try:
            self.session.finish()
        finally:
            super().close()


def _release_request_thread() -> None:
    """Under ASGI, Django runs a request's synchronous code (middleware, the view) in a
    thread that asgiref keeps for the whole request, streaming included. Once the view
    has returned the stream needs it no more: its database connections are given back
    (in that thread, where they live) and the thread ends, so a stream waiting for its
    upstream holds no thread. Sync work later in the request (closing the response) gets
    a fresh thread for its moment. This reaches into asgiref's per-request executor; if
    that ever changes, nothing is released and tests/gateway/test_asgi.py, which counts
    the server's threads under 200 streams, fails."""
    context = SyncToAsync.thread_sensitive_context.get(None)
    executor = SyncToAsync.context_to_thread_executor.pop(context, None) if context else None
    if executor is not None:
        executor.submit(connections.close_all)
        executor.shutdown(wait=False)


class StreamSession:
    """One streamed call from the first event to the record: what each upstream delta
    becomes on the wire, and how the call ends. Only `finish` touches the database; the
    sync and async drivers below differ only in how they read the upstream."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.rules = rules_of(call.policy)
        self.guard = OutputGuard(self.rules)
        self.id, self.created = f"chatcmpl-{call.generation.pk}", int(time.time())
        self.state: dict[str, Any] = {
            "finish": "stop",
            "ended": False,  # the upstream said how the answer ended
            "in": None,
            "out": None,
            "pieces": 0,
        }
        # Until the stream reaches its end, a stop is a client that went away.
        self.outcome: str = Generation.Status.CANCELLED
        self.error: tuple[str, str] | None = None
        self.finished = False
        self.plan: tuple[Any, Any] | None = None  # (spec, params) for the async path

    def chunk(
        self,
        delta: dict[str, Any] | None,
        finish: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> bytes:
        return _sse(
            protocol.chunk(
                id=self.id,
                model=self.call.request.model_name,
                created=self.created,
                delta=delta,
                finish_reason=finish,
                usage_=usage,
            )
        )

    def opening(self) -> bytes:
        return self.chunk({"role": "assistant", "content": ""})

    def upstream_kwargs(self) -> dict[str, Any]:
        return {
            "max_new_tokens_cap": self.rules["max_output_tokens"],
            "overrides": self.call.overrides,
        }

    @property
    def stopped(self) -> bool:
        """An output rule blocked: read no further."""
        return self.guard.blocked is not None

    def feed(self, delta: "StreamDelta") -> bytes | None:
        """One upstream delta; the chunk to send now, if any."""
        state = self.state
        if delta.text:
            state["pieces"] += 1
        if delta.finish_reason:
            state["finish"] = "length" if delta.finish_reason == "length" else "stop"
            state["ended"] = True
        if delta.input_tokens is not None:
            state["in"], state["out"] = delta.input_tokens, delta.output_tokens
        text = self.guard.feed(delta.text) if delta.text else ""
        return self.chunk({"content": text}) if text and not self.stopped else None

    def failed(self, exc: BaseException) -> None:
        """The backend failed before or during the stream."""
        self.outcome = Generation.Status.FAILED
        self.error = (f"The model call failed: {type(exc).__name__}: {exc}", "upstream_error")

    def conclude(self) -> list[bytes]:
        """The upstream has ended (or a rule stopped it): settle the outcome; the events
        to send before the record is written."""
        if self.outcome == Generation.Status.FAILED:
            return []
        if not self.stopped and not self.state["ended"]:
            # The connection closed before a finish reason: a cut answer, not a whole one.
            self.failed(
                RuntimeError("the upstream stream ended before the answer did (no finish reason)")
            )
            return []
        if self.stopped:
            self.outcome = Generation.Status.BLOCKED
            message = pipeline.blocked_message(self.call.policy, self.guard.blocked.findings)
            self.error = (message, "content_policy_violation")
            return []
        tail = self.guard.finish()
        self.outcome = Generation.Status.OK
        if self.call.wants_json:
            _, errors = structured.check_output(self.guard.sent, self.call.version.output_schema)
            if errors:
                self.outcome = Generation.Status.INVALID
                listed = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
                self.error = (
                    f"The model's answer does not meet the output contract: {listed}",
                    "output_contract_violation",
                )
        return [self.chunk({"content": tail})] if tail else []

    def finish(self) -> None:
        """Write the record and settle the quota (once)."""
        if not self.finished:
            self.finished = True
            _finish(self.call, self.guard, self.outcome, self.error, self.state)

    def closing(self) -> list[bytes]:
        """The last events, sent after the record is written: a client that has read
        [DONE] finds it."""
        if self.error is not None:
            message, code = self.error
            kind = "api_error" if code == "upstream_error" else "invalid_request_error"
            return [_error_event(message, code, kind)]
        events = [self.chunk({}, self.state["finish"])]
        if self.call.request.include_usage:
            events.append(self.chunk(None, usage=protocol.usage(*_usage(self.call, self.state))))
        return [*events, b"data: [DONE]\n\n"]


def _sync_events(session: StreamSession) -> Iterator[bytes]:
    call = session.call
    deltas = None
    try:
        yield session.opening()
        try:
            deltas = pipeline.stream_row(
                call.version, call.target, call.messages, **session.upstream_kwargs()
            )
            for delta in deltas:
                if (out := session.feed(delta)) is not None:
                    yield out
                if session.stopped:
                    break
        except Exception as exc:
            session.failed(exc)
        yield from session.conclude()
        session.finish()
        yield from session.closing()
    finally:
        if deltas is not None:
            deltas.close()  # a client that left: the upstream connection closes too
        session.finish()  # a no-op unless the client left: `cancelled`


async def _async_events(session: StreamSession) -> AsyncIterator[bytes]:
    call = session.call
    deltas = None
    _release_request_thread()
    try:
        yield session.opening()
        if session.plan is not None:  # else resolving it failed, and `failed` says why
            try:
                deltas = pipeline.astream_row(*session.plan, call.messages)
                async for delta in deltas:
                    if (out := session.feed(delta)) is not None:
                        yield out
                    if session.stopped:
                        break
            except Exception as exc:
                session.failed(exc)
        for event in session.conclude():
            yield event
        await _in_thread(session.finish)
        for event in session.closing():
            yield event
    finally:
        # A client that left (the ASGI handler cancels us on its disconnect): close the
        # upstream connection, then record `cancelled`.
        if deltas is not None:
            await deltas.aclose()
        if not session.finished:
            await _in_thread(session.finish)


async def _in_thread(function: Any) -> None:
    """Database work from a stream: in a thread of the event loop's shared pool, with
    the connection given back at the end."""

    def run() -> None:
        try:
            function()
        finally:
            connections.close_all()

    await sync_to_async(run, thread_sensitive=False)()


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
