"""A real HTTP server on loopback that speaks the OpenAI chat-completions protocol with
scripted answers — for the repair, fallback, batch and worker tests, where the answer
must be known in advance. (The real-protocol test against llama.cpp lives in
tests/workers/test_remote_runtime.py.)"""

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], "str | list[str] | tuple[int, Any]"]


def echo_last_user(request: dict[str, Any]) -> str:
    users = [m["content"] for m in request["messages"] if m["role"] == "user"]
    return f"echo: {users[-1] if users else ''}"


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 resets a burst of hundreds of connections.
    request_queue_size = 1024
    daemon_threads = True


class FakeOpenAI:
    def __init__(
        self,
        responder: Responder = echo_last_user,
        *,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        hold: threading.Event | None = None,
        cut_after: int | None = None,
    ) -> None:
        self.responder = responder
        self.delay = delay
        # Streams (`stream: true`): seconds between chunks, and what the client did.
        self.chunk_delay = chunk_delay
        # When set: every stream sends its first piece, then waits for this event.
        self.hold = hold
        # When set: a stream closes after this many pieces, without a finish or [DONE].
        self.cut_after = cut_after
        self.chunks_sent = 0
        self.disconnects = 0
        # Streams being sent right now, and the most at once.
        self.open_streams = 0
        self.max_open_streams = 0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    outer.requests.append(body)
                if outer.delay:
                    time.sleep(outer.delay)
                answer = outer.responder(body)
                status, payload = answer if isinstance(answer, tuple) else (200, answer)
                if status == 200 and body.get("stream"):
                    self._stream(body, payload)
                    return
                if isinstance(payload, list):
                    payload = "".join(payload)
                if status == 200 and isinstance(payload, str):
                    payload = {
                        "id": "cmpl-1",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model") or "fake",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": payload},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 10,
                            "completion_tokens": max(len(payload.split()), 1),
                            "total_tokens": 10 + max(len(payload.split()), 1),
                        },
                    }
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict[str, Any], payload: "str | list[str]") -> None:
                """SSE chunks: a list is sent piece by piece, a string word by word."""
                pieces = (
                    payload if isinstance(payload, list) else [w + " " for w in payload.split(" ")]
                )
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def event(data: dict[str, Any]) -> None:
                    self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()

                with outer._lock:
                    outer.open_streams += 1
                    outer.max_open_streams = max(outer.max_open_streams, outer.open_streams)
                base = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model") or "fake",
                }
                try:
                    for sent, piece in enumerate(pieces):
                        if outer.cut_after is not None and sent >= outer.cut_after:
                            return
                        event(
                            {
                                **base,
                                "choices": [
                                    {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                                ],
                            }
                        )
                        with outer._lock:
                            outer.chunks_sent += 1
                        if outer.hold is not None:
                            outer.hold.wait(120)
                        if outer.chunk_delay:
                            time.sleep(outer.chunk_delay)
                    event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    if (body.get("stream_options") or {}).get("include_usage"):
                        event(
                            {
                                **base,
                                "choices": [],
                                "usage": {
                                    "prompt_tokens": 10,
                                    "completion_tokens": len(pieces),
                                    "total_tokens": 10 + len(pieces),
                                },
                            }
                        )
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    with outer._lock:
                        outer.disconnects += 1
                finally:
                    with outer._lock:
                        outer.open_streams -= 1

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def scripted(*answers: "str | tuple[int, Any]") -> Responder:
    """Answer with these, in order; then repeat the last one."""
    queue = list(answers)

    def respond(request: dict[str, Any]) -> "str | tuple[int, Any]":
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return respond
