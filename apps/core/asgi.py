"""What studio/asgi.py builds around Django's handlers: gateway streams apart from the
rest, and a bound on requests in their synchronous phase."""

import asyncio
import json
import tempfile
from typing import Any

Scope = dict[str, Any]


class SyncPhaseLimit:
    """At most `limit` HTTP requests of this process between arriving and starting
    their response (FIFO); a request leaves the phase when its response starts."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._semaphore: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:  # made in the worker's event loop
            self._semaphore = asyncio.Semaphore(self.limit)
        semaphore = self._semaphore
        await semaphore.acquire()
        held = True

        def leave() -> None:
            nonlocal held
            if held:
                held = False
                semaphore.release()

        async def send_leaving(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                leave()
            await send(message)

        try:
            await self.app(scope, receive, send_leaving)
        finally:
            leave()


class StreamsApart:
    """Three ways into one Django project, chosen once the request's body has arrived:

    - gateway streams (`POST /v1/chat/completions` whose JSON asks for `"stream": true`)
      go to Django's ASGI handler (`streams`), where a stream waiting for its model
      holds no thread;
    - the other gateway calls (`/v1/`) go to Django's WSGI handler on a pool of threads
      of their own (`gateway`), so a slow upstream cannot take the pages' threads;
    - everything else goes to Django's WSGI handler on the pages' pool (`pages`).

    The body is read here, without a thread, before any handler sees it: a client that
    sends it slowly (slower than `MIN_RATE` after `GRACE` seconds) gets a 408 and holds
    no thread meanwhile; one over `max_body` gets a 413. The body is handed on with its
    `Content-Length`, so a chunked upload reaches the WSGI handlers too. A stream's
    client that disconnects before the response starts is told to Django only once it
    has: the view always finishes, and its response is closed (which records the call
    as cancelled and settles its quota) rather than dropped."""

    STREAM_PATH = "/v1/chat/completions"
    GATEWAY_PREFIX = "/v1/"
    GRACE = 10.0  # seconds before the minimum rate applies
    MIN_RATE = 10_000  # bytes per second, on average, after GRACE
    SPOOL = 1024 * 1024  # bodies larger than this wait on disk
    CHUNK = 256 * 1024

    def __init__(
        self, *, pages: Any, gateway: Any, streams: Any, peek_limit: int, max_body: int
    ) -> None:
        self.pages = pages
        self.gateway = gateway
        self.streams = streams
        self.peek_limit = peek_limit
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.pages(scope, receive, send)
            return
        if not _has_body(scope):  # most requests: nothing to read, nothing to decide
            gateway = scope["path"].startswith(self.GATEWAY_PREFIX)
            await (self.gateway if gateway else self.pages)(scope, receive, send)
            return
        body = tempfile.SpooledTemporaryFile(max_size=self.SPOOL)  # noqa: SIM115
        try:
            status = await self._read_body(receive, body)
            if status == "disconnected":
                return
            if status is not None:
                await _plain_error(send, *status)
                return
            size = body.tell()
            body.seek(0)
            scope = _with_length(scope, size)
            path, method = scope["path"], scope["method"]
            if path == self.STREAM_PATH and method == "POST" and size <= self.peek_limit:
                data = body.read()
                body.seek(0)
                if await _asks_to_stream(data):
                    await self._stream(scope, data, receive, send)
                    return
            app = self.gateway if path.startswith(self.GATEWAY_PREFIX) else self.pages
            await app(scope, _replay(body, self.CHUNK, receive), send)
        finally:
            body.close()

    async def _read_body(self, receive: Any, body: Any) -> tuple[int, str] | str | None:
        """Read the whole body into `body`: None when complete, "disconnected", or the
        (status, message) to answer with."""
        loop = asyncio.get_running_loop()
        started, received, more = loop.time(), 0, True
        while more:
            deadline = started + self.GRACE + received / self.MIN_RATE
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return (
                    408,
                    f"The request body arrived too slowly: {received} bytes in "
                    f"{loop.time() - started:.0f} s (at least {self.MIN_RATE} bytes a second "
                    f"after the first {self.GRACE:.0f} s).",
                )
            if message["type"] == "http.disconnect":
                return "disconnected"
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body:
                return (413, f"The request body is over {self.max_body} bytes.")
            body.write(chunk)
            more = message.get("more_body", False)
        return None

    async def _stream(self, scope: Scope, data: bytes, receive: Any, send: Any) -> None:
        started = asyncio.Event()
        delivered = False

        async def receive_held() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": data, "more_body": False}
            message = await receive()
            if message["type"] == "http.disconnect" and not started.is_set():
                await started.wait()  # let the view finish and its response be closed
            return message

        async def send_marking(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        await self.streams(scope, receive_held, send_marking)


def _has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a length above 0, or chunked)."""
    for name, value in scope.get("headers", []):
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _with_length(scope: Scope, size: int) -> Scope:
    """The scope with the body's real length, and no Transfer-Encoding: it is whole now."""
    headers = [
        (name, value)
        for name, value in scope.get("headers", [])
        if name.lower() not in (b"content-length", b"transfer-encoding")
    ]
    if size or scope.get("method") not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        headers.append((b"content-length", str(size).encode()))
    return {**scope, "headers": headers}


def _replay(body: Any, chunk: int, receive: Any) -> Any:
    """An ASGI `receive` that gives the buffered body, then the client's own messages."""
    done = False

    async def replay() -> dict[str, Any]:
        nonlocal done
        if done:
            return await receive()
        data = body.read(chunk)
        more = len(data) == chunk
        if not more:
            done = True
        return {"type": "http.request", "body": data, "more_body": more}

    return replay


async def _plain_error(send: Any, status: int, message: str) -> None:
    payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload.encode()})


INLINE_PARSE = 64 * 1024  # larger bodies are parsed in a thread, off the event loop


async def _asks_to_stream(body: bytes) -> bool:
    """Whether the body is a JSON object with `"stream": true`, however it is spelled
    (escapes, UTF-16): parsed, not searched. Bad JSON goes to the view, which says why."""
    if len(body) > INLINE_PARSE:
        return await asyncio.to_thread(_parse_stream_flag, body)
    return _parse_stream_flag(body)


def _parse_stream_flag(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("stream") is True
