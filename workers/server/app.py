"""The local OpenAI-compatible inference server: one or several registered models, their
LoRA adapters, one continuous-batching decode loop (`workers.runtime.engine.Engine`) per
model shared by every request for it. Several models share one process when they fit its
memory budget (`python -m workers.server --model a --model b --memory-budget-mb N`; the
budget is checked at start-up from the weights' sizes); a request names its model in
`model` (default: the first).

    GET  /health                 {"status": "ok", "model", "models", "pid", "running", ...}
    GET  /v1/models              each served model, then each adapter under the adapters
                                 root trained on it (`parent`)
    POST /v1/chat/completions    OpenAI's chat completions, streaming (SSE) or not, plus
                                 `adapter_id`: an adapter directory relative to the
                                 adapters root (TGI's field of that name)

A small threaded HTTP/1.1 server from the standard library: each connection has a thread
that parses, submits a `Sequence` to the engine and waits on its events; the engine's own
thread does all model work. A client that goes away mid-stream frees its slot.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from workers.runtime import BackendError
from workers.runtime.local import precision_of
from workers.server.protocol import (
    RequestError,
    chunk,
    completion,
    completion_id,
    parse_chat_request,
    usage_chunk,
)

logger = logging.getLogger("workers.server")
MAX_BODY_BYTES = 4 * 2**20


class InferenceService:
    """The model, its engine and its adapters; what the HTTP handler calls."""

    def __init__(self, local: Any, model_id: str, adapters_dir: Path, **engine_options) -> None:
        from workers.runtime.engine import Engine

        self.local = local
        self.model_id = model_id
        self.adapters_dir = Path(adapters_dir).resolve()
        self.engine = Engine(local, **engine_options)
        self.adapter_names: dict[str, str] = {}  # adapter_id -> peft adapter name
        self.adapter_lock = threading.Lock()

    def start(self) -> None:
        self.engine.start()

    def adapters(self, *, only_own: bool = False) -> list[str]:
        """Adapter ids under the adapters root; with `only_own`, those whose training
        record names this model (several models in one server)."""
        if not self.adapters_dir.is_dir():
            return []
        if only_own:
            return [a for a in self.adapters() if self.trained_on(a) in (None, self.model_id)]
        found = (
            config.parent.relative_to(self.adapters_dir)
            for config in self.adapters_dir.rglob("adapter_config.json")
        )
        # not a training run's checkpoints, nor a half-written (staging) directory
        return sorted(
            str(path)
            for path in found
            if not any(part == "checkpoints" or part.startswith(".") for part in path.parts)
        )

    def trained_on(self, adapter_id: str) -> str | None:
        record = self.adapters_dir / adapter_id / "studio_training.json"
        try:
            return json.loads(record.read_text()).get("base_model")
        except (OSError, ValueError, AttributeError):
            return None

    def adapter(self, adapter_id: str) -> str:
        """The engine's name for `adapter_id`, loading it on first use."""
        with self.adapter_lock:
            name = self.adapter_names.get(adapter_id)
            if name is not None:
                return name
            directory = (self.adapters_dir / adapter_id).resolve()
            if (
                not directory.is_relative_to(self.adapters_dir)
                or not (directory / "adapter_config.json").is_file()
            ):
                raise RequestError(
                    f"No adapter {adapter_id!r} under this server's adapters root; "
                    "GET /v1/models lists them.",
                    param="adapter_id",
                    code="adapter_not_found",
                )
            name = f"adapter{len(self.adapter_names) + 1}"
            try:
                self.engine.load_adapter(name, directory)
            except (ValueError, OSError, RuntimeError, KeyError) as exc:
                raise RequestError(
                    f"The adapter {adapter_id!r} cannot be loaded on {self.model_id}: {exc}",
                    param="adapter_id",
                    code="adapter_not_loadable",
                ) from exc
            self.adapter_names[adapter_id] = name
            return name

    def health(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "status": "ok",
            "model": self.model_id,
            "pid": os.getpid(),
            "device": str(engine.device),
            "dtype": str(self.local.dtype).removeprefix("torch."),
            "precision": precision_of(self.local.model),
            "attention": getattr(self.local.model.config, "_attn_implementation", None),
            "running": len(engine.running),
            "waiting": len(engine.waiting),
            "max_rows": engine.max_rows,
            "kv_budget_mb": engine.kv_budget // 2**20,
            "peak_rows": engine.peak_rows,
            "steps": engine.steps,
            "adapters_loaded": sorted(self.adapter_names),
        }

    def models(self, *, only_own: bool = False) -> dict[str, Any]:
        data = [{"id": self.model_id, "object": "model", "created": 0, "owned_by": "studio"}]
        data += [
            {
                "id": adapter,
                "object": "model",
                "created": 0,
                "owned_by": "studio",
                "parent": self.model_id,
            }
            for adapter in self.adapters(only_own=only_own)
        ]
        return {"object": "list", "data": data}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: InferenceHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    # -- routing ------------------------------------------------------------------------

    def do_GET(self) -> None:
        service = self.server.service
        if self.path == "/health":
            self._json(200, {**service.health(), "models": list(self.server.services)})
        elif self.path == "/v1/models":
            several = len(self.server.services) > 1
            data = [
                entry
                for each in self.server.services.values()
                for entry in each.models(only_own=several)["data"]
            ]
            self._json(200, {"object": "list", "data": data})
        elif self.path == "/v1/chat/completions":
            self._error(RequestError("Use POST.", code="method_not_allowed", status=405))
        else:
            self._error(RequestError(f"No route {self.path}.", code="not_found", status=404))

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self.close_connection = True  # its body is left unread
            self._error(RequestError(f"No route {self.path}.", code="not_found", status=404))
            return
        try:
            self._chat_completion()
        except RequestError as error:
            self._error(error)

    # -- chat completions ---------------------------------------------------------------

    def _chat_completion(self) -> None:
        from workers.runtime.engine import Sequence

        services = self.server.services
        request = parse_chat_request(self._body(), served_models=list(services))
        service = services[request.model] if request.model else self.server.service
        adapter = service.adapter(request.adapter_id) if request.adapter_id else None
        sequence = Sequence(
            service.local.prompt_ids(request.messages),
            request.params,
            adapter=adapter,
            stream=request.stream,
        )
        problem = service.engine.check(sequence)
        if problem is not None:
            raise RequestError(str(problem), param="messages", code="context_length_exceeded")
        service.engine.submit(sequence)
        ident = completion_id()
        model = request.adapter_id or service.model_id
        if not request.stream:
            outcome = sequence.result()
            if isinstance(outcome, BackendError):
                raise RequestError(str(outcome), status=500, kind="server_error")
            self._json(200, completion(ident, model, outcome))
            return
        try:
            self._stream(sequence, ident, model, request.include_usage)
        except OSError:  # the client went away: free its slot
            service.engine.cancel(sequence)

    def _stream(self, sequence: Any, ident: str, model: str, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(data: str) -> None:
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

        send(json.dumps(chunk(ident, model, {"role": "assistant", "content": ""}, None,
                              include_usage=include_usage)))  # fmt: skip
        while True:
            kind, value = sequence.events.get()
            if kind == "text":
                send(json.dumps(chunk(ident, model, {"content": value},
                                      include_usage=include_usage)))  # fmt: skip
                continue
            if isinstance(value, BackendError):
                send(json.dumps(RequestError(str(value), kind="server_error").body()))
            else:
                send(json.dumps(chunk(ident, model, {}, value.finish_reason,
                                      include_usage=include_usage)))  # fmt: skip
                if include_usage:
                    send(json.dumps(usage_chunk(ident, model, value)))
            break
        send("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- plumbing -----------------------------------------------------------------------

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError("A Content-Length header is required.", code="length_required")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(
                f"The request body is larger than {MAX_BODY_BYTES} bytes.",
                code="body_too_large",
                status=413,
            )
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(
                f"The request body is not valid JSON: {exc}.", code="invalid_json"
            ) from exc

    def _json(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, error: RequestError) -> None:
        self._json(error.status, error.body())


class InferenceHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], service: InferenceService | list[InferenceService]
    ) -> None:
        services = service if isinstance(service, list) else [service]
        self.services = {each.model_id: each for each in services}
        self.service = services[0]  # the default model
        super().__init__(address, Handler)
