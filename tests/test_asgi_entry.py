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


def _route(body: bytes, *, path: str = "/v1/chat/completions", chunks: int = 1, limit: int = 1000):
    """Which app StreamsApart chose, and the body that app read."""
    from apps.core.asgi import StreamsApart

    chosen: dict = {}

    def app(name):
        async def read(scope, receive, send):
            data, more = b"", True
            while more:
                message = await receive()
                data += message.get("body", b"")
                more = message.get("more_body", False)
            chosen.update(app=name, body=data)

        return read

    parts = [body[: len(body) // 2], body[len(body) // 2 :]] if chunks == 2 else [body]
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]

    async def receive():
        return messages.pop(0)

    router = StreamsApart(pages=app("pages"), streams=app("streams"), peek_limit=limit)
    scope = {"type": "http", "method": "POST", "path": path}
    asyncio.run(router(scope, receive, _ignore))
    return chosen["app"], chosen["body"]


def test_only_completion_calls_that_stream_take_the_async_path():
    streaming = b'{"model": "m", "messages": [], "stream": true}'
    assert _route(streaming) == ("streams", streaming)
    assert _route(streaming, chunks=2) == ("streams", streaming)  # body in two messages
    assert _route(b'{"model": "m", "stream": false}')[0] == "pages"
    assert _route(b'{"model": "m"}')[0] == "pages"
    assert _route(b'{"stream": true')[0] == "pages"  # bad JSON: the view answers 400
    assert _route(b'["stream"]')[0] == "pages"
    assert _route(streaming, path="/api/v1/squads")[0] == "pages"
    big = b'{"stream": true, "pad": "' + b"x" * 2000 + b'"}'
    assert _route(big, chunks=2, limit=1000) == ("pages", big)  # over the peek: replayed whole
