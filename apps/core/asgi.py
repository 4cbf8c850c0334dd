"""What studio/asgi.py builds around Django's handlers: gateway streams apart from the
rest, and a bound on requests in their synchronous phase."""

import asyncio
import json
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
    """Two ways into one Django project: gateway streams (`POST /v1/chat/completions`
    whose JSON body asks for `"stream": true`) go to Django's ASGI handler, where a
    stream waiting for its model holds no thread; every other request goes to Django's
    WSGI handler in a fixed pool of threads (a2wsgi), as a threaded server would run it:
    no thread started per request, and database connections kept per thread.

    The body of a completion call is read first (up to `peek_limit` bytes) to see
    whether it streams, then handed on unchanged."""

    STREAM_PATH = "/v1/chat/completions"

    def __init__(self, *, pages: Any, streams: Any, peek_limit: int) -> None:
        self.pages = pages
        self.streams = streams
        self.peek_limit = peek_limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self.STREAM_PATH
            or scope["method"] != "POST"
        ):
            await self.pages(scope, receive, send)
            return
        body, more, disconnected = b"", True, False
        while more and len(body) <= self.peek_limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected, more = True, False
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if disconnected:
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        app = self.streams if not more and _asks_to_stream(body) else self.pages
        await app(scope, replay, send)


def _asks_to_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False  # the gateway's own parser answers with the error
    return isinstance(data, dict) and data.get("stream") is True
