"""The gateway as `make run` serves it (gunicorn, one uvicorn worker, studio.asgi) keeps
200 streams open at once in one process without a thread per stream, and still answers
other requests meanwhile; every stream ends complete and recorded."""

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest

from apps.gateway import quotas
from apps.gateway import services as gateway
from apps.gateway.models import ServiceKey
from apps.generation.models import Generation
from apps.governance import services as governance
from tests.factories import UserFactory
from tests.gateway.conftest import gunicorn_server, make_key
from tests.generation.conftest import remote_target
from tests.generation.fake_openai import FakeOpenAI, scripted

STREAMS = 200
PIECES = [f"w{i} " for i in range(30)]


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


def _text(body: bytes) -> tuple[str, bool, dict | None]:
    text, done, usage = "", False, None
    for block in body.decode().split("\n\n"):
        if not block.startswith("data: "):
            continue
        data = block[len("data: ") :]
        if data == "[DONE]":
            done = True
            continue
        event = json.loads(data)
        assert "error" not in event, event
        if event.get("choices"):
            text += event["choices"][0]["delta"].get("content") or ""
        if event.get("usage"):
            usage = event["usage"]
    return text, done, usage


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads in /proc")
def test_one_process_holds_200_streams_without_a_thread_each(squad, tmp_path):
    # Every upstream stream sends its first piece, then waits until all 200 are open.
    release = threading.Event()
    with FakeOpenAI(scripted(PIECES), hold=release) as upstream:
        remote_target(squad, upstream.url)
        secret = make_key(squad)
        with gunicorn_server(tmp_path, "--workers", "1") as served:
            base, workers = served.url, served.workers()
            assert len(workers) == 1, workers
            peak: dict[str, int] = {}

            async def main() -> list[bytes]:
                limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
                async with httpx.AsyncClient(timeout=120, limits=limits) as client:

                    async def one() -> bytes:
                        async with client.stream(
                            "POST",
                            f"{base}/v1/chat/completions",
                            headers={"Authorization": f"Bearer {secret}"},
                            json={
                                "model": "fake",
                                "messages": [{"role": "user", "content": "x"}],
                                "stream": True,
                                "stream_options": {"include_usage": True},
                            },
                        ) as response:
                            assert response.status_code == 200, await response.aread()
                            return b"".join([part async for part in response.aiter_bytes()])

                    tasks = [asyncio.create_task(one()) for _ in range(STREAMS)]
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 120
                    while upstream.open_streams < STREAMS:
                        assert loop.time() < deadline, f"only {upstream.open_streams} open"
                        ended = [t for t in tasks if t.done()]
                        assert not ended, f"{ended[0].exception()!r}\n{served.log()}"
                        await asyncio.sleep(0.05)
                    # All 200 are open in one worker process: it still answers, and it
                    # has far fewer threads than streams.
                    peak["threads"] = _threads(workers[0])
                    health = await client.get(f"{base}/healthz")
                    peak["health"] = health.status_code
                    peak["open"] = upstream.open_streams
                    release.set()
                    return await asyncio.gather(*tasks)

            try:
                bodies = asyncio.run(main())
            finally:
                release.set()
    assert peak["open"] == STREAMS and upstream.max_open_streams == STREAMS
    assert peak["health"] == 200
    assert peak["threads"] < 40, f"{peak['threads']} threads for {STREAMS} open streams"
    expected = "".join(PIECES)
    for body in bodies:
        text, done, usage = _text(body)
        assert text == expected and done and usage["completion_tokens"] == len(PIECES)
    statuses = list(Generation.objects.values_list("status", flat=True))
    assert len(statuses) == STREAMS and set(statuses) == {"ok"}


RULES = {"pii": {"email": "redact"}, "blocked_terms": ["Project Falcon"]}
CASES = {
    # A PII value split across two upstream chunks is still redacted.
    "redacted": (
        ["Write to bob@cor", "p.example", " today please, ", "and thank you."],
        "ok",
        None,
    ),
    # A blocked term ends the stream with an error chunk before it is sent.
    "blocked": (
        ["All fine so far. ", "Then Project ", "Falcon launches", " tomorrow."],
        "blocked",
        "content_policy_violation",
    ),
    # The upstream fails: an error chunk, and the reservation is released.
    "failed": ((500, {"error": {"message": "down"}}), "failed", "upstream_error"),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", sorted(CASES))
def test_stream_governance_on_the_async_path(squad, asgi_server, case):
    """The streaming rules of tests/gateway/test_streaming.py (Django's test client,
    the sync path) hold on the async path the server takes."""
    governance.policy_update(actor=UserFactory(username="compliance"), squad=squad, rules=RULES)
    script, status, error = CASES[case]
    with FakeOpenAI(scripted(script)) as upstream:
        remote_target(squad, upstream.url)
        secret = make_key(squad)
        key = ServiceKey.objects.get()
        gateway.quota_set(
            actor=UserFactory(username="owner"), squad=squad, key=key, tokens_per_minute=100_000
        )
        with httpx.Client(timeout=60) as client:
            response = client.post(
                f"{asgi_server}/v1/chat/completions",
                headers={"Authorization": f"Bearer {secret}"},
                json={
                    "model": "fake",
                    "messages": [{"role": "user", "content": "x"}],
                    "stream": True,
                },
            )
    assert response.status_code == 200
    events = [
        json.loads(block[6:])
        for block in response.text.split("\n\n")
        if block.startswith("data: {")
    ]
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")
    )
    generation = Generation.objects.get(pk=response.headers["X-Studio-Generation-Id"])
    assert generation.status == status
    if error is None:
        assert text == "Write to [EMAIL_1] today please, and thank you."
        assert generation.output_text == text and response.text.endswith("data: [DONE]\n\n")
    else:
        assert events[-1]["error"]["code"] == error and "Falcon" not in text
        assert "[DONE]" not in response.text
    spent = quotas.usage(squad.pk, key.pk)["tokens"]
    if case == "failed":
        assert spent == 0, "the failed call's reservation was not released"
    else:
        assert spent == generation.input_tokens + generation.output_tokens > 0


@pytest.mark.django_db(transaction=True)
def test_pages_forms_and_chunked_bodies_through_the_server(squad, asgi_server):
    """What is not a stream goes through the WSGI pool behind the body reader: a sign-in
    form with its CSRF cookie, and a chunked request body (no Content-Length) that
    arrives whole."""
    UserFactory(username="walker", password="walk-the-walk-1")
    with httpx.Client(base_url=asgi_server, timeout=30) as client:
        page = client.get("/login/")
        assert page.status_code == 200
        token = client.cookies["csrftoken"]
        signed_in = client.post(
            "/login/",
            data={
                "username": "walker",
                "password": "walk-the-walk-1",
                "csrfmiddlewaretoken": token,
            },
            headers={"Referer": f"{asgi_server}/login/"},
        )
        assert signed_in.status_code == 302, signed_in.text[:300]
        assert client.get(signed_in.headers["location"]).status_code == 200

    with FakeOpenAI() as upstream:
        remote_target(squad, upstream.url)
        secret = make_key(squad)
        body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "chunky"}]})

        def pieces():
            for i in range(0, len(body), 7):
                yield body[i : i + 7].encode()

        response = httpx.post(
            f"{asgi_server}/v1/chat/completions",
            content=pieces(),  # sent chunked
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: chunky"


@pytest.mark.django_db(transaction=True)
def test_streams_whose_clients_leave_at_once_are_all_recorded_and_settled(squad, asgi_server):
    """Clients that close their socket right after sending a stream request (before any
    byte of the answer): every call still ends in a final state, none stays `running`,
    and the quota counts only what the records say."""
    import socket
    import time
    from urllib.parse import urlparse

    with FakeOpenAI(scripted(PIECES), chunk_delay=0.05) as upstream:
        remote_target(squad, upstream.url)
        secret = make_key(squad)
        key = ServiceKey.objects.get()
        gateway.quota_set(
            actor=UserFactory(username="owner"), squad=squad, key=key, tokens_per_minute=10**6
        )
        body = json.dumps(
            {"model": "fake", "messages": [{"role": "user", "content": "x"}], "stream": True}
        ).encode()
        url = urlparse(asgi_server)
        request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        for _ in range(12):
            with socket.create_connection((url.hostname, url.port)) as sock:
                sock.sendall(request)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = list(Generation.objects.values_list("status", flat=True))
            if len(statuses) == 12 and "running" not in statuses:
                break
            time.sleep(0.2)
    assert len(statuses) == 12 and "running" not in statuses, statuses
    recorded = sum(g.input_tokens + g.output_tokens for g in Generation.objects.all())
    assert quotas.usage(squad.pk, key.pk)["tokens"] == recorded
