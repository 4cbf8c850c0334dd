"""RemoteBackend against real HTTP servers on loopback.

- llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) serving SmolLM2-135M
  checks the real protocol (marked `model`, skipped if llama_cpp is not installed);
- a small fault-injecting `http.server` checks retries, backoff, error mapping and headers.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.workers.llama_server import free_port, llama_server
from workers.runtime import BackendError, GenerationParams
from workers.runtime.remote import RemoteBackend

TOKEN_ENV = "STUDIO_TEST_REMOTE_TOKEN"
GREEDY = GenerationParams(max_new_tokens=16, temperature=0.0, top_p=1.0, seed=1234)
FAST_RETRY = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0}


@pytest.fixture(autouse=True)
def _online_hub(monkeypatch):
    """Every server here is on loopback; HF_HUB_OFFLINE (read at import) would block them."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


# -- fault-injecting fake server ----------------------------------------------------------


def completion_body(
    content: str = "hello",
    *,
    finish_reason: str = "stop",
    usage: dict | None = None,
    with_usage: bool = True,
) -> dict:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
    }
    if with_usage:
        body["usage"] = usage or {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    return body


@dataclass
class Reply:
    status: int = 200
    body: dict | str | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict
    body: dict


class FakeServer:
    """Answers POSTs from a script of replies (the last one repeats), records requests.

    `reply` may also be a callable taking the parsed request body and returning a Reply.
    """

    def __init__(self, replies) -> None:
        self.replies = replies
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()

    def next_reply(self, body: dict) -> Reply:
        if callable(self.replies):
            return self.replies(body)
        with self._lock:
            index = min(len(self.requests) - 1, len(self.replies) - 1)
            return self.replies[index]

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                with fake._lock:
                    fake.requests.append(
                        Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                reply = fake.next_reply(body)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body if reply.body is not None else completion_body()
                data = (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                )
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


MESSAGES = [{"role": "user", "content": "Say hello."}]


# -- protocol details -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_request_shape_and_url_with_or_without_v1(suffix):
    fake = FakeServer([Reply(body=completion_body("hi there", finish_reason="length"))])
    params = GenerationParams(
        max_new_tokens=12, temperature=0.3, top_p=0.9, stop=("\n\n", "END"), seed=7
    )
    with fake.serve() as url:
        backend = RemoteBackend(url + suffix, model="base-model", adapter_id="squad-a/lora-3")
        result = backend.generate(MESSAGES, params)

    assert result.text == "hi there"
    assert (result.input_tokens, result.output_tokens) == (7, 2)
    assert result.finish_reason == "length"
    assert result.extra["attempts"] == 1
    assert result.extra["latency_s"] >= 0
    assert "usage_missing" not in result.extra
    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["messages"] == MESSAGES
    assert request.body["model"] == "base-model"
    assert request.body["adapter_id"] == "squad-a/lora-3"
    assert request.body["max_tokens"] == 12
    assert request.body["temperature"] == 0.3
    assert request.body["top_p"] == 0.9
    assert request.body["stop"] == ["\n\n", "END"]
    assert request.body["seed"] == 7
    assert request.body.get("stream") in (None, False)


def test_missing_usage_falls_back_to_zero_and_finish_reason_maps_to_stop():
    fake = FakeServer(
        [Reply(body=completion_body("ok", finish_reason="eos_token", with_usage=False))]
    )
    with fake.serve() as url:
        result = RemoteBackend(url).generate(MESSAGES, GenerationParams())
    assert (result.text, result.input_tokens, result.output_tokens) == ("ok", 0, 0)
    assert result.extra["usage_missing"] is True
    assert result.finish_reason == "stop"
    assert "adapter_id" not in fake.requests[0].body


def test_malformed_success_body_is_not_retried():
    fake = FakeServer([Reply(body="<html>not json</html>")])
    with fake.serve() as url, pytest.raises(BackendError) as info:
        RemoteBackend(url, **FAST_RETRY).generate(MESSAGES, GenerationParams())
    assert info.value.retryable is False
    assert "malformed" in str(info.value)
    assert len(fake.requests) == 1


def test_base_url_must_be_http():
    with pytest.raises(BackendError) as info:
        RemoteBackend("localhost:8080")
    assert info.value.retryable is False


# -- retries and error mapping ----------------------------------------------------------


def test_retries_503_then_succeeds():
    fake = FakeServer(
        [
            Reply(503, {"error": "Model is loading"}),
            Reply(503, {"error": "Model is loading"}),
            Reply(200, completion_body("recovered")),
        ]
    )
    with fake.serve() as url:
        result = RemoteBackend(url, max_retries=3, **FAST_RETRY).generate(MESSAGES, GREEDY)
    assert result.text == "recovered"
    assert result.extra["attempts"] == 3
    assert len(result.extra["retry_delays_s"]) == 2
    assert all(0 < d <= 0.05 for d in result.extra["retry_delays_s"])
    assert len(fake.requests) == 3


def test_429_honours_retry_after():
    fake = FakeServer(
        [
            Reply(429, {"error": "rate limited"}, headers={"Retry-After": "0"}),
            Reply(200, completion_body("after rate limit")),
        ]
    )
    with fake.serve() as url:
        result = RemoteBackend(url, backoff_base=5.0).generate(MESSAGES, GREEDY)
    # backoff_base=5 s would be used without the header; Retry-After: 0 wins
    assert result.text == "after rate limit"
    assert result.extra["attempts"] == 2
    assert result.extra["retry_delays_s"] == [0.0]


def test_429_retry_after_is_capped():
    fake = FakeServer(
        [
            Reply(429, {"error": "slow down"}, headers={"Retry-After": "3600"}),
            Reply(200, completion_body()),
        ]
    )
    started = time.monotonic()
    with fake.serve() as url:
        backend = RemoteBackend(url, backoff_base=0.01, retry_after_max=0.2)
        result = backend.generate(MESSAGES, GREEDY)
    assert result.extra["retry_delays_s"] == [0.2]
    assert time.monotonic() - started < 5


def test_400_fails_at_once_with_status_and_server_text():
    fake = FakeServer(
        [Reply(400, {"error": "Input validation error: prompt has 9000 tokens, max is 2048"})]
    )
    with fake.serve() as url, pytest.raises(BackendError) as info:
        RemoteBackend(url, max_retries=3, **FAST_RETRY).generate(MESSAGES, GREEDY)
    assert info.value.retryable is False
    assert "400" in str(info.value)
    assert "prompt has 9000 tokens" in str(info.value)
    assert len(fake.requests) == 1


def test_404_is_not_retried():
    fake = FakeServer([Reply(404, {"error": "The model `nope` does not exist."})])
    with fake.serve() as url, pytest.raises(BackendError) as info:
        RemoteBackend(url, model="nope", **FAST_RETRY).generate(MESSAGES, GREEDY)
    assert info.value.retryable is False
    assert "404" in str(info.value) and "does not exist" in str(info.value)
    assert len(fake.requests) == 1


def test_persistent_500_gives_up_retryable_after_all_attempts():
    fake = FakeServer([Reply(500, {"error": "CUDA out of memory"})])
    with fake.serve() as url, pytest.raises(BackendError) as info:
        RemoteBackend(url, max_retries=3, **FAST_RETRY).generate(MESSAGES, GREEDY)
    assert info.value.retryable is True
    assert "4 attempts" in str(info.value)
    assert "CUDA out of memory" in str(info.value)
    assert len(fake.requests) == 4


def test_connection_refused_is_retryable_after_max_retries():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = RemoteBackend(url, max_retries=2, backoff_base=0.01, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.generate(MESSAGES, GREEDY)
    assert info.value.retryable is True
    assert "3 attempts" in str(info.value)
    assert "Connect" in str(info.value)
    assert time.monotonic() - started < 10


def test_read_timeout_is_retryable():
    fake = FakeServer([Reply(200, completion_body(), delay=1.0)])
    with fake.serve() as url, pytest.raises(BackendError) as info:
        RemoteBackend(url, max_retries=1, backoff_base=0.01, timeout=0.3).generate(MESSAGES, GREEDY)
    assert info.value.retryable is True
    assert "2 attempts" in str(info.value)
    assert len(fake.requests) == 2


def test_offline_mode_is_reported_not_retried(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fake = FakeServer([Reply()])
    with fake.serve() as url, pytest.raises(BackendError) as info:
        RemoteBackend(url, **FAST_RETRY).generate(MESSAGES, GREEDY)
    assert info.value.retryable is False
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert fake.requests == []


# -- token handling ---------------------------------------------------------------------


def test_missing_token_variable_names_it(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    fake = FakeServer([Reply()])
    with fake.serve() as url, pytest.raises(BackendError) as info:
        RemoteBackend(url, token_env=TOKEN_ENV).generate(MESSAGES, GREEDY)
    assert TOKEN_ENV in str(info.value)
    assert info.value.retryable is False
    assert fake.requests == []


def test_token_is_read_at_call_time_and_sent_as_bearer(monkeypatch):
    fake = FakeServer([Reply()])
    with fake.serve() as url:
        backend = RemoteBackend(url, token_env=TOKEN_ENV)
        monkeypatch.setenv(TOKEN_ENV, "s3cret-first")
        backend.generate(MESSAGES, GREEDY)
        monkeypatch.setenv(TOKEN_ENV, "s3cret-rotated")
        backend.generate(MESSAGES, GREEDY)
    assert [r.headers.get("authorization") for r in fake.requests] == [
        "Bearer s3cret-first",
        "Bearer s3cret-rotated",
    ]
    assert "s3cret" not in repr(backend)


def test_secret_not_in_error_messages(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret-value")
    fake = FakeServer([Reply(401, {"error": "invalid token"})])
    with fake.serve() as url, pytest.raises(BackendError) as info:
        RemoteBackend(url, token_env=TOKEN_ENV).generate(MESSAGES, GREEDY)
    assert "401" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_local_hf_token_is_never_forwarded_without_token_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_local_token_must_not_leak")
    fake = FakeServer([Reply()])
    with fake.serve() as url:
        RemoteBackend(url).generate(MESSAGES, GREEDY)
    assert "authorization" not in fake.requests[0].headers


# -- concurrency ------------------------------------------------------------------------


def test_generate_many_runs_concurrently_and_keeps_input_order():
    def reply(body: dict) -> Reply:
        index = int(body["messages"][-1]["content"])
        # later inputs answer sooner, so completion order is the reverse of input order
        return Reply(body=completion_body(f"answer {index}"), delay=0.05 * (6 - index))

    fake = FakeServer(reply)
    conversations = [[{"role": "user", "content": str(i)}] for i in range(6)]
    with fake.serve() as url:
        started = time.monotonic()
        results = RemoteBackend(url).generate_many(conversations, GREEDY, concurrency=6)
        elapsed = time.monotonic() - started
    assert [r.text for r in results] == [f"answer {i}" for i in range(6)]
    assert elapsed < 0.05 * sum(6 - i for i in range(6))  # faster than sequential (1.05 s)


def test_generate_many_failure_modes():
    def reply(body: dict) -> Reply:
        if body["messages"][-1]["content"] == "bad":
            return Reply(400, {"error": "bad input"})
        return Reply(body=completion_body("fine"))

    fake = FakeServer(reply)
    conversations = [[{"role": "user", "content": c}] for c in ("ok", "bad", "ok")]
    with fake.serve() as url:
        backend = RemoteBackend(url, **FAST_RETRY)
        mixed = backend.generate_many(conversations, GREEDY, return_exceptions=True)
        with pytest.raises(BackendError, match="400"):
            backend.generate_many(conversations, GREEDY, concurrency=1)
    assert mixed[0].text == "fine" and mixed[2].text == "fine"
    assert isinstance(mixed[1], BackendError) and not mixed[1].retryable


# -- real llama.cpp server --------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_url() -> Iterator[str]:
    with llama_server() as url:
        yield url


@pytest.fixture
def llama(llama_url) -> RemoteBackend:
    return RemoteBackend(llama_url, model="smollm2-135m-instruct", timeout=60, max_retries=1)


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.model
def test_llama_greedy_completion_with_usage(llama):
    first = llama.generate(QUESTION, GREEDY)
    second = llama.generate(QUESTION, GREEDY)
    assert first.text.strip()
    assert first.extra["attempts"] == 1
    assert "usage_missing" not in first.extra
    assert 10 <= first.input_tokens <= 100  # chat template + question
    assert 0 < first.output_tokens <= 16
    assert first.finish_reason in ("stop", "length")
    assert second.text == first.text  # temperature 0 + seed: deterministic


@pytest.mark.model
def test_llama_length_limit(llama):
    params = GenerationParams(max_new_tokens=4, temperature=0.0, seed=1)
    prompt = [{"role": "user", "content": "Write a long essay about the history of Paris."}]
    result = llama.generate(prompt, params)
    assert result.output_tokens == 4
    assert result.finish_reason == "length"


@pytest.mark.model
def test_llama_stop_sequence_is_honoured(llama):
    params = GenerationParams(max_new_tokens=32, temperature=0.0, seed=1)
    prompt = [{"role": "user", "content": "Describe Paris in two sentences."}]
    full = llama.generate(prompt, params).text
    words = full.split()
    assert len(words) >= 4, full
    stop_word = words[len(words) // 2]
    stopped = llama.generate(prompt, replace(params, stop=(stop_word,)))
    assert stopped.text == full[: full.index(stop_word)]
    assert stopped.finish_reason == "stop"
    assert stopped.output_tokens < llama.generate(prompt, params).output_tokens


@pytest.mark.model
def test_llama_generate_many_preserves_order(llama):
    # prompts of strictly increasing length: prompt token counts identify each answer
    conversations = [
        [{"role": "user", "content": "Name a colour." + " Please answer briefly." * i}]
        for i in range(4)
    ]
    params = GenerationParams(max_new_tokens=8, temperature=0.0, seed=3)
    results = llama.generate_many(conversations, params, concurrency=4)
    counts = [r.input_tokens for r in results]
    assert counts == sorted(counts) and len(set(counts)) == 4, counts
    assert all(r.text.strip() for r in results)
