"""Remote inference over HTTP: TGI, vLLM, llama.cpp or any OpenAI-compatible server.

Requests go through `huggingface_hub.InferenceClient.chat_completion` (non-streaming).
This module never imports torch; `huggingface_hub` itself is imported lazily so the web
process can import it (e.g. to validate a model target) without the `ml` extra.

Error handling contract (see `BackendError.retryable`):
- HTTP 408, 429 and 5xx, connection errors and timeouts are retried with exponential
  backoff and jitter (`Retry-After` is honoured on 429/503, capped); when the retries are
  exhausted a `BackendError(retryable=True)` says how many attempts were made.
- any other 4xx, a malformed response, a missing token variable or a bad configuration
  raise `BackendError(retryable=False)` at once.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from workers.runtime import BackendError, GenerationParams, GenerationResult, StreamDelta

if TYPE_CHECKING:
    from huggingface_hub import InferenceClient

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429})
ERROR_TEXT_LIMIT = 500


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection/timeout exception classes of whichever HTTP stack huggingface_hub uses.

    huggingface_hub 0.x used `requests`, 1.x `httpx`, 2.x `httpx2`; timeouts are wrapped
    in `InferenceTimeoutError` (a `TimeoutError`). HTTP status errors are handled apart.
    """
    classes: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import httpx2

        classes.append(httpx2.TransportError)
    except ImportError:
        pass
    try:
        import httpx

        classes.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        import requests

        classes += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return tuple(classes)


def _config_errors() -> tuple[type[BaseException], ...]:
    """Transport errors that retrying cannot fix (bad scheme or URL)."""
    classes: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        classes += [module.UnsupportedProtocol, module.InvalidURL]
    return tuple(classes)


_async_factory_lock = threading.Lock()
_async_factory_set = False


def _share_tls_context() -> None:
    """huggingface_hub makes a new httpx AsyncClient for every AsyncInferenceClient, and
    each one builds its TLS context by loading the CA bundle: about 28 ms of CPU per
    stream, spent on the server's event loop. Give them one TLS context, made once per
    process (the same settings huggingface_hub's default factory uses otherwise). With a
    huggingface_hub whose internals differ, its default stays."""
    global _async_factory_set
    with _async_factory_lock:
        if _async_factory_set:
            return
        _async_factory_set = True
        try:
            import ssl

            import certifi
            from huggingface_hub import set_async_client_factory
            from huggingface_hub.utils._http import (
                async_hf_request_event_hook,
                async_hf_response_event_hook,
            )

            try:
                import httpx2 as http
            except ImportError:
                import httpx as http  # huggingface_hub 1.x
        except ImportError:
            return
        # As httpx does with trust_env: SSL_CERT_FILE / SSL_CERT_DIR win over certifi.
        context = ssl.create_default_context(
            cafile=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            capath=os.environ.get("SSL_CERT_DIR") or None,
        )

        def factory() -> Any:
            return http.AsyncClient(
                event_hooks={
                    "request": [async_hf_request_event_hook],
                    "response": [async_hf_response_event_hook],
                },
                follow_redirects=True,
                timeout=None,
                verify=context,
            )

        set_async_client_factory(factory)


def _stream_delta(chunk: Any) -> StreamDelta:
    """One chunk of a chat completion stream as a StreamDelta."""
    choices = getattr(chunk, "choices", None) or []
    usage = getattr(chunk, "usage", None)
    delta = StreamDelta()
    if choices:
        delta.text = getattr(choices[0].delta, "content", None) or ""
        delta.finish_reason = choices[0].finish_reason
    if usage is not None:
        delta.input_tokens = getattr(usage, "prompt_tokens", None)
        delta.output_tokens = getattr(usage, "completion_tokens", None)
    return delta


def _parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: delay-seconds or an HTTP-date; None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _truncate(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _response_text(exc: Any) -> str:
    """The server's error body (or the exception text) of an HfHubHTTPError."""
    response = getattr(exc, "response", None)
    text = ""
    if response is not None:
        try:
            text = response.text
        except Exception:  # the body may be unread or undecodable
            text = ""
    if not text:
        text = getattr(exc, "server_message", None) or str(exc)
    return _truncate(text)


def _error_object(response: Any) -> dict | None:
    """The `error` object of an OpenAI-shaped error body, else None."""
    try:
        error = response.json().get("error")
    except Exception:  # no body, not JSON, not an object
        return None
    return error if isinstance(error, dict) else None


class _RetryableFailure(Exception):
    """Internal: one attempt failed in a way that retrying may fix."""

    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after


class RemoteBackend:
    """Chat completions against a remote OpenAI-compatible server.

    base_url: the server root, e.g. ``http://127.0.0.1:8080`` or ``http://host:8000/v1``
        (InferenceClient appends ``/v1/chat/completions`` or ``/chat/completions``).
    token_env: the NAME of an environment variable holding the API token, read at call
        time and sent as ``Authorization: Bearer …``. When None no Authorization header
        is sent at all (the locally stored Hugging Face token is never forwarded).
    model: sent as the request's ``model`` (vLLM and routers need it; TGI ignores it).
    adapter_id: TGI multi-LoRA adapter, sent in the request body as ``adapter_id``.
    extra_body: more fields of the request body (the local server's ``base_model_sha256``).
    timeout: seconds per attempt (connect and read).
    max_retries: retries after the first attempt, so at most ``max_retries + 1`` requests.
    backoff_base / backoff_max: the n-th retry waits ``min(backoff_max,
        backoff_base * 2**(n-1))`` scaled by a random factor in [0.5, 1].
    retry_after_max: cap on a server-sent ``Retry-After``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token_env: str | None = None,
        model: str | None = None,
        adapter_id: str | None = None,
        extra_body: dict[str, Any] | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base_url = (base_url or "").strip().rstrip("/")
        # InferenceClient treats anything that is not an http(s) URL as a Hub model id and
        # would route the request (with the local HF token) to the Hugging Face router.
        if not base_url.startswith(("http://", "https://")):
            raise BackendError(
                f"remote backend base_url must start with http:// or https://, got {base_url!r}",
                retryable=False,
            )
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.base_url = base_url
        self.token_env = token_env or None
        self.model = model or None
        self.adapter_id = adapter_id or None
        self.extra_body = dict(extra_body or {})
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.retry_after_max = float(retry_after_max)
        self._sleep = sleep

    def __repr__(self) -> str:
        return (
            f"RemoteBackend(base_url={self.base_url!r}, model={self.model!r}, "
            f"adapter_id={self.adapter_id!r}, token_env={self.token_env!r})"
        )

    # -- public API -------------------------------------------------------------------

    def generate(self, messages: list[dict], params: GenerationParams) -> GenerationResult:
        """One chat completion, retried on transient failures."""
        client = self._client()
        kwargs = self._request_kwargs(params)
        transport_errors = _transport_errors()
        config_errors = _config_errors()
        attempts_allowed = self.max_retries + 1
        delays: list[float] = []
        last_error = ""
        for attempt in range(1, attempts_allowed + 1):
            started = time.monotonic()
            try:
                output = self._call(client, messages, kwargs, transport_errors, config_errors)
            except _RetryableFailure as failure:
                last_error = failure.description
                if attempt == attempts_allowed:
                    break
                delay = self._delay(attempt, failure.retry_after)
                delays.append(round(delay, 3))
                logger.warning(
                    "remote generation attempt %d/%d failed (%s); retrying in %.2fs",
                    attempt,
                    attempts_allowed,
                    last_error,
                    delay,
                )
                self._sleep(delay)
                continue
            latency = time.monotonic() - started
            result = self._to_result(output)
            result.extra.update(
                {
                    "latency_s": round(latency, 4),
                    "attempts": attempt,
                    "retry_delays_s": delays,
                    "backend": "remote",
                }
            )
            return result
        raise BackendError(
            f"remote generation at {self.base_url} failed after {attempts_allowed} "
            f"attempt{'s' if attempts_allowed != 1 else ''}: {last_error}",
            retryable=True,
        )

    def generate_many(
        self,
        conversations: Sequence[list[dict]],
        params: GenerationParams,
        *,
        concurrency: int = 4,
        return_exceptions: bool = False,
    ) -> list[GenerationResult | BackendError]:
        """Generate for many conversations concurrently; results are in input order.

        With return_exceptions=False (default) the first failure (in input order) is raised
        and requests not yet started are cancelled. With return_exceptions=True a failed
        conversation yields its BackendError in place of a result.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        conversations = list(conversations)
        if not conversations:
            return []
        workers = min(concurrency, len(conversations))
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remote-gen")
        futures: list[Future[GenerationResult]] = []
        failed = threading.Event()

        def run(messages: list[dict]) -> GenerationResult:
            if failed.is_set() and not return_exceptions:
                raise BackendError("cancelled after an earlier failure", retryable=True)
            try:
                return self.generate(messages, params)
            except BaseException:
                failed.set()
                raise

        try:
            futures = [executor.submit(run, messages) for messages in conversations]
            results: list[GenerationResult | BackendError] = []
            for future in futures:
                try:
                    results.append(future.result())
                except BackendError as exc:
                    if not return_exceptions:
                        raise
                    results.append(exc)
            return results
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def stream(self, messages: list[dict], params: GenerationParams) -> Iterator[StreamDelta]:
        """One streamed chat completion (SSE, usage requested at the end). Not retried:
        text may already be on its way to a caller. Closing the iterator closes the
        connection, which is how a server learns to stop generating."""
        client = self._client()
        transport_errors = _transport_errors()
        with client:
            try:
                chunks = self._call(
                    client,
                    messages,
                    self._stream_kwargs(params),
                    transport_errors,
                    _config_errors(),
                )
            except _RetryableFailure as failure:
                raise self._stream_failed(failure) from None
            try:
                for chunk in chunks:
                    yield _stream_delta(chunk)
            except (*transport_errors, ValueError) as exc:
                raise self._stream_broke(exc, transport_errors) from exc

    async def astream(
        self, messages: list[dict], params: GenerationParams
    ) -> AsyncIterator[StreamDelta]:
        """`stream` over huggingface_hub's AsyncInferenceClient: waiting for the next
        chunk holds no thread. Same errors, same deltas; closing the iterator closes the
        connection."""
        _share_tls_context()
        client = self._client(asynchronous=True)
        transport_errors = _transport_errors()
        async with client:
            try:
                try:
                    chunks = await client.chat_completion(messages, **self._stream_kwargs(params))
                except Exception as exc:
                    self._raise_call_error(exc, transport_errors, _config_errors())
                    raise
            except _RetryableFailure as failure:
                raise self._stream_failed(failure) from None
            try:
                async for chunk in chunks:
                    yield _stream_delta(chunk)
            except (*transport_errors, ValueError) as exc:
                raise self._stream_broke(exc, transport_errors) from exc
            finally:
                close = getattr(chunks, "aclose", None)
                if close is not None:
                    await close()

    def _stream_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        return {
            **self._request_kwargs(params),
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def _stream_failed(self, failure: _RetryableFailure) -> BackendError:
        return BackendError(
            f"remote streaming at {self.base_url} failed: {failure.description}",
            retryable=True,
        )

    def _stream_broke(
        self, exc: BaseException, transport_errors: tuple[type[BaseException], ...]
    ) -> BackendError:
        if isinstance(exc, transport_errors):
            return BackendError(
                f"remote stream from {self.base_url} broke: {type(exc).__name__}: "
                f"{_truncate(str(exc))}",
                retryable=True,
            )
        return BackendError(
            f"remote server {self.base_url} sent a malformed stream: {_truncate(str(exc))}",
            retryable=False,
        )

    # -- internals --------------------------------------------------------------------

    def _token(self) -> str | None:
        if self.token_env is None:
            return None
        token = os.environ.get(self.token_env)
        if not token:
            raise BackendError(
                f"environment variable {self.token_env} (API token for {self.base_url}) "
                "is not set or empty",
                retryable=False,
            )
        return token

    def _client(self, *, asynchronous: bool = False) -> Any:  # (Async)InferenceClient
        try:
            from huggingface_hub import AsyncInferenceClient, InferenceClient
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise BackendError(
                "huggingface_hub is not installed; install the `ml` extra for remote inference",
                retryable=False,
            ) from exc
        token = self._token()
        # An explicit `authorization` header wins over huggingface_hub's default headers;
        # None removes it, so without token_env the cached HF token is never sent.
        authorization = f"Bearer {token}" if token else None
        return (AsyncInferenceClient if asynchronous else InferenceClient)(
            base_url=self.base_url,
            headers={"authorization": authorization},  # type: ignore[dict-item]
            timeout=self.timeout,
        )

    def _request_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            "seed": params.seed,
        }
        if self.model:
            kwargs["model"] = self.model
        extra = {**self.extra_body, **({"adapter_id": self.adapter_id} if self.adapter_id else {})}
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _call(
        self,
        client: InferenceClient,
        messages: list[dict],
        kwargs: dict[str, Any],
        transport_errors: tuple[type[BaseException], ...],
        config_errors: tuple[type[BaseException], ...],
    ) -> Any:
        try:
            return client.chat_completion(messages, **kwargs)
        except Exception as exc:
            self._raise_call_error(exc, transport_errors, config_errors)
            raise

    def _raise_call_error(
        self,
        exc: Exception,
        transport_errors: tuple[type[BaseException], ...],
        config_errors: tuple[type[BaseException], ...],
    ) -> None:
        """A failed chat_completion call as a retryable failure or a BackendError; other
        exceptions are left to the caller."""
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        try:
            raise exc
        except HfHubHTTPError as exc:
            response = getattr(exc, "response", None)
            status = getattr(response, "status_code", None)
            text = _response_text(exc)
            if status is not None and (status in RETRYABLE_STATUS or status >= 500):
                retry_after = None
                if status in (429, 503):
                    retry_after = _parse_retry_after(response.headers.get("retry-after"))
                raise _RetryableFailure(f"HTTP {status}: {text}", retry_after) from exc
            raise BackendError(
                f"remote server {self.base_url} rejected the request with HTTP {status}: {text}",
                retryable=False,
                detail=_error_object(response),
            ) from exc
        except OfflineModeIsEnabled as exc:
            raise BackendError(
                "HF_HUB_OFFLINE is set, so huggingface_hub refuses every HTTP request, "
                f"including to {self.base_url}; unset it for workers using a remote backend",
                retryable=False,
            ) from exc
        except config_errors as exc:
            raise BackendError(
                f"invalid remote server URL {self.base_url}: {exc}", retryable=False
            ) from exc
        except transport_errors as exc:
            raise _RetryableFailure(
                f"{type(exc).__name__}: {_truncate(str(exc)) or 'connection failed'}"
            ) from exc
        except ValueError as exc:  # JSON decoding / parsing of a 2xx body
            raise BackendError(
                f"remote server {self.base_url} returned a malformed response: "
                f"{_truncate(str(exc))}",
                retryable=False,
            ) from exc

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        backoff = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return backoff * random.uniform(0.5, 1.0)

    def _to_result(self, output: Any) -> GenerationResult:
        choices = getattr(output, "choices", None) or []
        if not choices:
            raise BackendError(
                f"remote server {self.base_url} returned no choices", retryable=False
            )
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) or ""
        finish = getattr(choice, "finish_reason", None)
        extra: dict[str, Any] = {"raw_finish_reason": finish}
        served_model = getattr(output, "model", None)
        if served_model:
            extra["model"] = served_model
        usage = getattr(output, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
        completion_tokens = getattr(usage, "completion_tokens", None) if usage is not None else None
        if prompt_tokens is None or completion_tokens is None:
            extra["usage_missing"] = True
        return GenerationResult(
            text=text,
            input_tokens=int(prompt_tokens or 0),
            output_tokens=int(completion_tokens or 0),
            finish_reason="length" if finish == "length" else "stop",
            extra=extra,
        )
