"""Streaming: chunks then usage; output rules applied as the text arrives (a PII value
split across chunks is still redacted; a blocked term ends the stream with an error
chunk and is never sent); a client that leaves is recorded as `cancelled`."""

import json
import time

import httpx
import pytest

from apps.gateway.streaming import OutputGuard
from apps.generation.models import Generation
from apps.governance import services as governance
from apps.governance.rules import DEFAULT_RULES
from tests.factories import UserFactory
from tests.gateway.conftest import V1, make_key
from tests.generation.conftest import remote_target
from tests.generation.fake_openai import FakeOpenAI, scripted

RULES = {
    "pii": {"email": "redact", "phone": "flag", "ssn": "block", "secret": "redact"},
    "blocked_terms": ["Project Falcon"],
}


def _events(response) -> list:
    raw = b"".join(response.streaming_content).decode()
    events = []
    for block in raw.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _text(events: list) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content", "")
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def _stream(client: V1, content: str = "x", **extra):
    return client.chat(
        {
            "model": "fake",
            "messages": [{"role": "user", "content": content}],
            "stream": True,
            **extra,
        }
    )


@pytest.mark.django_db
def test_stream_sends_chunks_then_usage_and_records_once(squad):
    with FakeOpenAI(scripted(["Hello", " there", " friend"])) as server:
        remote_target(squad, server.url)
        response = _stream(V1(make_key(squad)), stream_options={"include_usage": True})
        assert response.status_code == 200
        assert response["Content-Type"] == "text/event-stream"
        events = _events(response)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert _text(events) == "Hello there friend"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3
    generation = Generation.objects.get(pk=response["X-Studio-Generation-Id"])
    assert generation.status == "ok" and generation.source == "gateway"
    assert (generation.input_tokens, generation.output_tokens) == (10, 3)
    assert generation.output_text == "Hello there friend" and generation.provenance


@pytest.mark.django_db
def test_pii_split_across_chunks_is_still_redacted(squad):
    governance.policy_update(actor=UserFactory(username="compliance"), squad=squad, rules=RULES)
    pieces = ["Write to bob@cor", "p.example", " today please, ", "and thank you."]
    with FakeOpenAI(scripted(pieces)) as server:
        remote_target(squad, server.url)
        response = _stream(V1(make_key(squad)))
        events = _events(response)
    text = _text(events)
    assert "bob@" not in text and "corp.example" not in text
    assert text == "Write to [EMAIL_1] today please, and thank you."
    generation = Generation.objects.get(pk=response["X-Studio-Generation-Id"])
    assert generation.output_text == text
    assert [f["type"] for f in generation.findings if f["stage"] == "output"] == ["email"]


@pytest.mark.django_db
def test_blocked_output_ends_the_stream_with_an_error_chunk(squad):
    governance.policy_update(actor=UserFactory(username="compliance"), squad=squad, rules=RULES)
    pieces = ["All fine so far. ", "Then Project ", "Falcon launches", " tomorrow."]
    with FakeOpenAI(scripted(pieces)) as server:
        remote_target(squad, server.url)
        response = _stream(V1(make_key(squad)))
        events = _events(response)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "content_policy_violation"
    assert "Falcon" not in _text(events)
    generation = Generation.objects.get(pk=response["X-Studio-Generation-Id"])
    assert generation.status == "blocked" and generation.output_text == ""


@pytest.mark.django_db
def test_failed_upstream_stream_is_an_error_chunk_and_refunds(squad):
    with FakeOpenAI(scripted((500, {"error": {"message": "down"}}))) as server:
        remote_target(squad, server.url)
        response = _stream(V1(make_key(squad)))
        events = _events(response)
    assert events[-1]["error"]["code"] == "upstream_error"
    assert Generation.objects.get().status == "failed"


@pytest.mark.django_db
def test_an_upstream_stream_cut_before_its_finish_is_a_failure_not_an_answer(squad):
    with FakeOpenAI(scripted(["one ", "two ", "three ", "four"]), cut_after=2) as server:
        remote_target(squad, server.url)
        response = _stream(V1(make_key(squad)))
        events = _events(response)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_error"
    assert events[-1]["error"]["type"] == "api_error"
    assert Generation.objects.get().status == "failed"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("server", ["gateway_server", "asgi_server"])
def test_client_disconnect_cancels_upstream_and_records_cancelled(squad, server, request):
    """On a threaded WSGI server (the generator is closed) and under ASGI (the handler
    cancels the stream's task on the client's disconnect)."""
    gateway_server = request.getfixturevalue(server)
    pieces = [f"word{i} " for i in range(200)]
    with FakeOpenAI(scripted(pieces), chunk_delay=0.02) as server:
        remote_target(squad, server.url)
        secret = make_key(squad)
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST",
                f"{gateway_server}/v1/chat/completions",
                headers={"Authorization": f"Bearer {secret}"},
                json={
                    "model": "fake",
                    "messages": [{"role": "user", "content": "x"}],
                    "stream": True,
                },
            ) as response,
        ):
            generation_id = response.headers["X-Studio-Generation-Id"]
            seen = 0
            for line in response.iter_lines():
                if line.startswith("data: "):
                    seen += 1
                if seen >= 5:
                    break
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = Generation.objects.get(pk=generation_id).status
            if status != "running":
                break
            time.sleep(0.1)
        time.sleep(0.5)
        assert server.disconnects == 1, "the upstream connection was not closed"
        assert server.chunks_sent < 200
    generation = Generation.objects.get(pk=generation_id)
    assert generation.status == "cancelled"
    assert generation.output_text.startswith("word0 ")


def test_output_guard_holds_back_only_what_a_rule_needs():
    rules = {
        **DEFAULT_RULES,
        "pii": {**DEFAULT_RULES["pii"], "email": "redact"},
        "blocked_terms": ["x" * 90],
    }
    guard = OutputGuard(rules)
    assert guard.hold == 91
    sent = guard.feed("a" * 200)
    assert sent == "a" * (200 - 91)
    assert guard.finish() == "a" * 91
