"""The bound studio/asgi.py puts on requests in their synchronous phase (middleware and
view, up to the response's start); streams past that point are not counted."""

import asyncio
import contextlib

from apps.core.asgi import SyncPhaseLimit


async def _ignore(message: dict) -> None:
    pass


def test_at_most_limit_requests_before_their_response_starts():
    state = {"in_phase": 0, "peak": 0, "streaming": 0, "peak_streaming": 0}

    async def main() -> None:
        gate = asyncio.Event()

        async def app(scope, receive, send):
            state["in_phase"] += 1
            state["peak"] = max(state["peak"], state["in_phase"])
            await asyncio.sleep(0.01)  # the view's work
            state["in_phase"] -= 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            state["streaming"] += 1
            state["peak_streaming"] = max(state["peak_streaming"], state["streaming"])
            await gate.wait()  # a stream waiting for its upstream
            await send({"type": "http.response.body", "body": b""})

        limited = SyncPhaseLimit(app, 3)
        tasks = [asyncio.create_task(limited({"type": "http"}, None, _ignore)) for _ in range(20)]
        async with asyncio.timeout(10):
            while state["streaming"] < 20:
                await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert state["peak"] == 3  # never more than the limit in their synchronous phase
    assert state["peak_streaming"] == 20  # while every stream stayed open


def test_a_failing_request_gives_its_place_back():
    async def app(scope, receive, send):
        raise RuntimeError("view failed")

    async def main() -> None:
        limited = SyncPhaseLimit(app, 1)
        for _ in range(3):  # the second would wait forever if the first kept its place
            with contextlib.suppress(RuntimeError):
                await asyncio.wait_for(limited({"type": "http"}, None, _ignore), 2)

    asyncio.run(main())


def _route(
    body: bytes,
    *,
    path: str = "/v1/chat/completions",
    chunks: int = 1,
    limit: int = 1000,
    max_body: int = 100_000,
):
    """Which app StreamsApart chose, the body it read and the Content-Length it saw."""
    from apps.core.asgi import StreamsApart

    chosen: dict = {}

    def app(name):
        async def read(scope, receive, send):
            data, more = b"", True
            while more:
                message = await receive()
                data += message.get("body", b"")
                more = message.get("more_body", False)
            length = dict(scope["headers"]).get(b"content-length")
            chosen.update(app=name, body=data, length=length)

        return read

    parts = [body[: len(body) // 2], body[len(body) // 2 :]] if chunks == 2 else [body]
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]

    async def receive():
        return messages.pop(0)

    sent: list = []

    async def send(message):
        sent.append(message)

    router = StreamsApart(
        pages=app("pages"),
        gateway=app("gateway"),
        streams=app("streams"),
        peek_limit=limit,
        max_body=max_body,
    )
    announced = (
        (b"transfer-encoding", b"chunked")
        if chunks == 2
        else (b"content-length", b"%d" % len(body))
    )
    scope = {"type": "http", "method": "POST", "path": path, "headers": [announced]}
    asyncio.run(router(scope, receive, send))
    if not chosen:
        return sent[0]["status"], sent[1]["body"]
    assert chosen["length"] == str(len(body)).encode()  # whole, with its length
    return chosen["app"], chosen["body"]


def test_only_completion_calls_that_stream_take_the_async_path():
    streaming = b'{"model": "m", "messages": [], "stream": true}'
    assert _route(streaming) == ("streams", streaming)
    assert _route(streaming, chunks=2) == ("streams", streaming)  # body in two messages
    escaped = rb'{"model": "m", "\u0073tream": true}'
    assert _route(escaped)[0] == "streams"  # parsed, not searched
    assert _route('{"stream": true}'.encode("utf-16"))[0] == "streams"
    assert _route(b'{"model": "m", "stream": false}')[0] == "gateway"
    assert _route(b'{"model": "m"}')[0] == "gateway"
    assert _route(b'{"stream": true')[0] == "gateway"  # bad JSON: the view answers 400
    assert _route(b'{"stream": true, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}")[0] == "gateway"
    assert _route(b'["stream"]')[0] == "gateway"
    assert _route(streaming, path="/v1/models")[0] == "gateway"
    assert _route(streaming, path="/api/v1/squads")[0] == "pages"
    big = b'{"stream": true, "pad": "' + b"x" * 2000 + b'"}'
    assert _route(big, chunks=2, limit=1000) == ("gateway", big)  # over the peek: replayed
    status, message = _route(big, max_body=1000)
    assert status == 413 and b"over 1000 bytes" in message


def test_a_body_sent_too_slowly_is_a_408_without_a_thread(monkeypatch):
    from apps.core.asgi import StreamsApart

    monkeypatch.setattr(StreamsApart, "GRACE", 0.2)
    called = []

    async def app(scope, receive, send):
        called.append(scope)

    async def receive():
        await asyncio.sleep(0.15)  # one byte at a time, never faster
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent: list = []

    async def send(message):
        sent.append(message)

    router = StreamsApart(pages=app, gateway=app, streams=app, peek_limit=10, max_body=10**6)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/login/",
        "headers": [(b"content-length", b"100000")],
    }
    asyncio.run(asyncio.wait_for(router(scope, receive, send), 10))
    assert not called
    assert sent[0]["status"] == 408 and b"too slowly" in sent[1]["body"]


def test_a_stream_whose_client_left_early_still_gets_its_response_closed():
    """Django cancels a request when its client disconnects; for a stream the
    disconnect is held until the response has started, so the view's response is
    closed (the call recorded, its quota settled) instead of dropped."""
    from apps.core.asgi import StreamsApart

    events: list[str] = []

    async def streams(scope, receive, send):
        await receive()  # the body
        listener = asyncio.create_task(receive())  # Django's listen_for_disconnect
        await asyncio.sleep(0.05)  # the view's synchronous work
        events.append("disconnect seen early" if listener.done() else "view finished")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await listener
        events.append("disconnect after start")

    incoming = [
        {"type": "http.request", "body": b'{"stream": true}', "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive():
        return incoming.pop(0)

    async def send(message):
        pass

    router = StreamsApart(
        pages=None, gateway=None, streams=streams, peek_limit=1000, max_body=10**6
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-length", b"16")],
    }
    asyncio.run(asyncio.wait_for(router(scope, receive, send), 5))
    assert events == ["view finished", "disconnect after start"]


def test_a_request_without_a_body_goes_straight_through():
    from apps.core.asgi import StreamsApart

    seen: list[str] = []

    def app(name):
        async def handle(scope, receive, send):
            seen.append(name)

        return handle

    router = StreamsApart(
        pages=app("pages"), gateway=app("gateway"), streams=None, peek_limit=10, max_body=10
    )

    async def never():  # nothing is read before the app runs
        raise AssertionError("the body reader ran for a request without a body")

    for path in ("/squads/", "/v1/models"):
        scope = {"type": "http", "method": "GET", "path": path, "headers": []}
        asyncio.run(router(scope, never, _ignore))
    assert seen == ["pages", "gateway"]
