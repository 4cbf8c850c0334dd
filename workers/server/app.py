"""The local OpenAI-compatible inference server: the registered models, their LoRA
adapters, one continuous-batching decode loop (`workers.runtime.engine.Engine`) per
loaded model shared by every request for it. Several models share one process within
its memory budget (`--memory-budget-mb N`, the weights' bytes; `ModelPool`): the
`--model`s are loaded at start-up, any other registered model on its first request,
evicting the least recently used idle model when the budget needs it. A request names
its model in `model` (default: the first `--model`).

The server learns the registry from the records registration writes under the workers'
data dir (`DATA_DIR/models/<name>/studio_model.json`: files and sha256 manifest,
workers.runtime.registry), and a request may carry `base_model_sha256`, the registration
the apps expect. A model is loaded only when its files match that manifest; otherwise
the request is refused with `code: "model_files_changed"` (409, with `model`,
`manifest_sha256` and `problems` in the error object), which the worker or web process
that sent it records in the registry (the version becomes `changed`, audited).

    GET  /health                 {"status": "ok", "model", "models", "pid", "running", ...}
    GET  /v1/models              each loaded model, then each registered model that could
                                 be loaded (`loaded: false`), then each adapter under the
                                 adapters root with the model it was trained on (`parent`)
    POST /v1/chat/completions    OpenAI's chat completions, streaming (SSE) or not, plus
                                 `adapter_id`: an adapter directory relative to the
                                 adapters root (TGI's field of that name), and
                                 `base_model_sha256`

A small threaded HTTP/1.1 server from the standard library: each connection has a thread
that parses, submits a `Sequence` to the engine and waits on its events; the engine's own
thread does all model work. A client that goes away mid-stream frees its slot.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
BUSY_RETRY_AFTER_S = 2
# bytes a parameter takes in memory, by the weights' precision (workers.runtime.local); q4
# keeps the fp32 weights beside the packed 4-bit ones and the head's bf16 copy
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "q4": 4.75}


class InferenceService:
    """The model, its engine and its adapters; what the HTTP handler calls."""

    def __init__(
        self,
        local: Any,
        model_id: str,
        adapters_dir: Path,
        *,
        manifest_sha256: str = "",
        **engine_options,
    ) -> None:
        from workers.runtime.engine import Engine

        self.local = local
        self.model_id = model_id
        self.manifest_sha256 = manifest_sha256  # the registration loaded ("" unknown)
        self.adapters_dir = Path(adapters_dir).resolve()
        self.engine = Engine(local, **engine_options)
        self.adapter_names: dict[str, str] = {}  # adapter_id -> peft adapter name
        self.adapter_lock = threading.Lock()
        model = local.model
        self.weight_bytes = sum(
            t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
        )
        self.in_use = 0  # requests holding it (ModelPool)
        self.last_used = time.monotonic()

    def start(self) -> None:
        self.engine.start()

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
            trained = _training_record(directory).get("base_model_sha256") or ""
            if trained and self.manifest_sha256 and trained != self.manifest_sha256:
                raise RequestError(
                    f"The adapter {adapter_id!r} was trained on registration {trained[:12]} "
                    f"of its base model; {self.model_id} here is registration "
                    f"{self.manifest_sha256[:12]}: an adapter only goes on the base model it "
                    "was trained on.",
                    param="adapter_id",
                    code="adapter_base_mismatch",
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

    def stop(self) -> None:
        from workers.runtime.local import unload_local_model

        self.engine.stop()
        unload_local_model(self.local)


def adapter_ids(root: Path) -> list[str]:
    """The adapter ids (directories relative to `root`) under the adapters root: not a
    training run's checkpoints, nor a half-written (staging) directory."""
    if not root.is_dir():
        return []
    found = (config.parent.relative_to(root) for config in root.rglob("adapter_config.json"))
    return sorted(
        str(path)
        for path in found
        if not any(part == "checkpoints" or part.startswith(".") for part in path.parts)
    )


def _model_entry(name: str, **more: Any) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "studio", **more}


def _training_record(directory: Path) -> dict[str, Any]:
    try:
        record = json.loads((directory / "studio_training.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class ModelPool:
    """The loaded models of one server within its memory budget (the weights' bytes; 0:
    no limit). `use(name, expected_sha256)` holds a model for one request, loading it
    first when it is registered but not loaded (or loaded from another registration):
    its files are checked against the registration's manifest (ModelFilesChanged ->
    409 `model_files_changed`), its size against the budget, evicting least recently
    used models that no request holds. One load at a time; requests to loaded models
    do not wait for it."""

    def __init__(
        self,
        adapters_dir: Path,
        *,
        budget_bytes: int = 0,
        default_model: str = "",
        **engine_options: Any,
    ) -> None:
        self.adapters_dir = Path(adapters_dir)
        self.budget_bytes = budget_bytes
        self.default_model = default_model
        self.engine_options = engine_options
        self.services: dict[str, InferenceService] = {}  # in least recently used order
        self.lock = threading.Lock()  # guards services and in_use
        self.load_lock = threading.Lock()  # one load at a time

    # -- what a request uses --------------------------------------------------------------

    @contextmanager
    def use(self, name: str | None, expected_sha256: str = "") -> Iterator[InferenceService]:
        service = self.acquire(name or self.default_model, expected_sha256)
        try:
            yield service
        finally:
            with self.lock:
                service.in_use -= 1
                service.last_used = time.monotonic()

    def acquire(self, name: str, expected_sha256: str = "") -> InferenceService:
        service = self._held(name, expected_sha256)
        if service is not None:
            return service
        with self.load_lock:
            service = self._held(name, expected_sha256)  # loaded while this one waited
            if service is None:
                service = self.load(name, expected_sha256, evict=True)
                with self.lock:
                    service.in_use += 1
            return service

    def _held(self, name: str, expected_sha256: str) -> InferenceService | None:
        with self.lock:
            service = self.services.get(name)
            if service is None:
                return None
            if expected_sha256 and service.manifest_sha256 not in ("", expected_sha256):
                return None  # loaded from another registration: load the expected one
            service.in_use += 1
            self.services[name] = self.services.pop(name)  # most recently used last
            return service

    # -- loading and evicting -------------------------------------------------------------

    def load(self, name: str, expected_sha256: str = "", *, evict: bool) -> InferenceService:
        """Load `name` (call with load_lock held, or before serving): RequestError when it
        is not registered here, its files changed, or it cannot fit the budget."""
        from workers.runtime import BackendError
        from workers.runtime.local import load_local_model
        from workers.runtime.registry import ModelFilesChanged, read_record

        if not MODEL_NAME.match(name) or name not in self.loadable():
            raise RequestError(
                f"The model {name!r} does not exist; this server serves the registered "
                f"models {', '.join(map(repr, self.loadable()))}.",
                param="model",
                code="model_not_found",
                status=404,
            )
        if not expected_sha256:
            record = read_record(name)
            expected_sha256 = record.manifest_sha256 if record else ""
        with self.lock:  # a copy of another registration of it goes first, when idle
            old = self.services.get(name)
            if old is not None and old.in_use:
                raise RequestError(
                    f"The model {name!r} is being replaced by registration "
                    f"{expected_sha256[:12]}; requests still use the previous one, retry "
                    "shortly.",
                    param="model",
                    code="model_reloading",
                    status=503,
                    retry_after=BUSY_RETRY_AFTER_S,
                )
            if old is not None:
                del self.services[name]
        if old is not None:
            old.stop()
        self._make_room(name, self.estimate(name), evict=evict)
        try:
            local = load_local_model(name, expected_sha256)
        except ModelFilesChanged as exc:
            logger.error("refused to load %s: %s", name, exc)
            raise RequestError(
                str(exc),
                param="model",
                code="model_files_changed",
                status=409,
                extra={
                    "model": exc.model,
                    "manifest_sha256": exc.manifest_sha256,
                    "problems": exc.problems,
                },
            ) from exc
        except (BackendError, OSError, ValueError, RuntimeError, KeyError) as exc:
            # not registered on this worker, another registration, unreadable files
            logger.error("cannot load %s: %s", name, exc)
            raise RequestError(
                f"The model {name!r} cannot be loaded: {exc}",
                param="model",
                code="model_not_loadable",
                status=409,
            ) from exc
        service = InferenceService(
            local,
            name,
            self.adapters_dir,
            manifest_sha256=expected_sha256,
            **self.engine_options,
        )
        try:
            # the estimate is from the files; what counts from now on is what it takes
            self._make_room(name, service.weight_bytes, evict=evict)
        except RequestError:
            service.stop()
            raise
        service.start()
        with self.lock:
            self.services[name] = service
        logger.info(
            "loaded %s (%d MiB of weights; %d MiB of %s in use)",
            name,
            service.weight_bytes // 2**20,
            self.used_bytes() // 2**20,
            f"{self.budget_bytes // 2**20} MiB" if self.budget_bytes else "no budget",
        )
        return service

    def estimate(self, name: str) -> int:
        from workers.runtime.local import cpu_precision
        from workers.runtime.registry import parameter_count

        return int(parameter_count(name) * PRECISION_BYTES.get(cpu_precision(), 4))

    def used_bytes(self, *, but: str = "") -> int:
        with self.lock:
            return sum(s.weight_bytes for n, s in self.services.items() if n != but)

    def _make_room(self, name: str, need: int, *, evict: bool) -> None:
        """Evict models no request holds, least recently used first, until `need` more
        bytes fit the budget. RequestError naming the budget when they cannot: 400 when
        the model alone is larger (or at start-up), 503 with Retry-After when models that
        requests hold are in the way."""
        budget = self.budget_bytes
        if not budget:
            return
        mib = 2**20
        if need > budget:
            raise RequestError(
                f"The model {name!r} needs about {need // mib} MiB of weights; this server's "
                f"memory budget is {budget // mib} MiB (--memory-budget-mb). Serve it from "
                "another server process with a larger budget.",
                param="model",
                code="model_over_memory_budget",
            )
        evicted: list[InferenceService] = []
        with self.lock:
            used = sum(service.weight_bytes for service in self.services.values())
            for candidate, service in list(self.services.items()):  # least recent first
                if used + need <= budget:
                    break
                if evict and not service.in_use:
                    evicted.append(self.services.pop(candidate))
                    used -= service.weight_bytes
            if used + need > budget:
                for service in evicted:  # this refusal evicts nothing
                    self.services[service.model_id] = service
                held = ", ".join(
                    f"{n} ({s.weight_bytes // mib} MiB)" for n, s in self.services.items()
                )
                raise RequestError(
                    f"The model {name!r} needs about {need // mib} MiB of weights and this "
                    f"server's memory budget of {budget // mib} MiB (--memory-budget-mb) is "
                    f"held by {held}"
                    + ("; they are answering requests, retry shortly." if evict else "."),
                    param="model",
                    code="memory_budget_exceeded",
                    status=503 if evict else 400,
                    retry_after=BUSY_RETRY_AFTER_S if evict else None,
                )
        for service in evicted:
            logger.info("evicted %s (least recently used, idle) to load %s", service.model_id, name)
            service.stop()
        if evicted:
            gc.collect()

    # -- what it lists --------------------------------------------------------------------

    def loadable(self) -> list[str]:
        from workers.runtime.registry import served_names

        return sorted(set(served_names()) | set(self.services))

    def models(self) -> dict[str, Any]:
        """Loaded models, then the others that could be loaded (within the budget alone),
        then the adapters with the model each was trained on (`parent`; the default model
        for an adapter without a training record)."""
        with self.lock:
            loaded = list(self.services)
        data = [_model_entry(name, loaded=True) for name in loaded]
        for name in self.loadable():
            if name in loaded:
                continue
            if self.budget_bytes and self.estimate(name) > self.budget_bytes:
                continue
            data.append(_model_entry(name, loaded=False))
        names = {entry["id"] for entry in data}
        root = self.adapters_dir.resolve()
        for adapter in adapter_ids(root):
            parent = _training_record(root / adapter).get("base_model")
            parent = parent or self.default_model
            if parent in names:
                data.append(_model_entry(adapter, parent=parent))
        return {"object": "list", "data": data}

    def stop(self) -> None:
        with self.lock:
            services, self.services = list(self.services.values()), {}
        for service in services:
            service.engine.stop()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: InferenceHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    # -- routing ------------------------------------------------------------------------

    def do_GET(self) -> None:
        pool = self.server.pool
        if self.path == "/health":
            with pool.lock:
                loaded = list(pool.services)
                service = pool.services.get(pool.default_model) or next(
                    iter(pool.services.values()), None
                )
            health = service.health() if service is not None else {"status": "ok"}
            self._json(
                200,
                {
                    **health,
                    "pid": os.getpid(),
                    "models": loaded,
                    "memory_budget_mb": pool.budget_bytes // 2**20,
                    "weights_mb": pool.used_bytes() // 2**20,
                },
            )
        elif self.path == "/v1/models":
            self._json(200, pool.models())
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
        request = parse_chat_request(self._body())
        with self.server.pool.use(request.model, request.base_model_sha256) as service:
            self._complete(service, request)

    def _complete(self, service: InferenceService, request: Any) -> None:
        from workers.runtime.engine import Sequence

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
        payload = json.dumps(error.body()).encode()
        self.send_response(error.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if error.retry_after is not None:
            self.send_header("Retry-After", str(error.retry_after))
        self.end_headers()
        self.wfile.write(payload)


class InferenceHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        models: ModelPool | InferenceService | list[InferenceService],
    ) -> None:
        """`models`: the pool, or services already loaded (a pool of them, no budget)."""
        if isinstance(models, ModelPool):
            self.pool = models
        else:
            services = models if isinstance(models, list) else [models]
            self.pool = ModelPool(services[0].adapters_dir, default_model=services[0].model_id)
            self.pool.services = {each.model_id: each for each in services}
        super().__init__(address, Handler)
