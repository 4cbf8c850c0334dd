"""The OpenAI chat-completions request and response shapes the local server speaks.

No torch here: parsing a request and shaping a response are pure, and a bad request is a
`RequestError` that the server answers in OpenAI's error shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from workers.runtime import GenerationParams, GenerationResult

SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4
DEFAULT_MAX_TOKENS = 256
# Fields whose meaning this server does not implement: refusing them beats ignoring them.
UNSUPPORTED = ("tools", "functions", "tool_choice", "response_format", "logit_bias")


class RequestError(Exception):
    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        extra: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = (
            message,
            param,
            code,
            status,
            kind,
        )
        self.extra = extra or {}  # more fields of the error object (e.g. `problems`)
        self.retry_after = retry_after  # seconds, sent as Retry-After

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
                **self.extra,
            }
        }


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False
    adapter_id: str | None = None
    model: str | None = None  # one of the served models; None: the first
    base_model_sha256: str = ""  # the registration the caller expects ("": any)


def parse_chat_request(body: Any, *, served_models: list[str] | None = None) -> ChatRequest:
    """Check a /v1/chat/completions body; RequestError names the first bad field.

    `adapter_id` (a string, optional) selects a LoRA adapter per request, as TGI's field
    of that name does; `model` must be one of `served_models` when given (None: the
    server decides, loading a registered model on first use). `base_model_sha256`
    (optional) is the registration's manifest hash the caller expects the model to have.
    """
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", code="invalid_body")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string.", param="model")
    expected = body.get("base_model_sha256") or ""
    if not isinstance(expected, str) or (expected and not SHA256.match(expected)):
        raise RequestError(
            "base_model_sha256 must be 64 hexadecimal characters.", param="base_model_sha256"
        )
    if model is not None and served_models is not None and model not in served_models:
        raise RequestError(
            f"The model {model!r} does not exist; this server serves "
            f"{', '.join(map(repr, served_models))}.",
            param="model",
            code="model_not_found",
            status=404,
        )
    messages = _messages(body.get("messages"))
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise RequestError(
                f"{name} is not supported by this server.", param=name, code="unsupported"
            )
    if body.get("n", 1) not in (1, None):
        raise RequestError("Only n=1 is supported.", param="n", code="unsupported")
    if body.get("logprobs"):
        raise RequestError("logprobs are not supported.", param="logprobs", code="unsupported")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise RequestError(f"{param} must be a whole number of at least 1.", param=param)
    temperature = _number(body, "temperature", 1.0, low=0.0, high=2.0)
    top_p = _number(body, "top_p", 1.0, low=0.0, high=1.0)
    if top_p == 0:
        raise RequestError("top_p must be greater than 0.", param="top_p")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise RequestError("seed must be a whole number.", param="seed")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError(
            "stream_options must be an object with a boolean include_usage.",
            param="stream_options",
        )
    adapter_id = body.get("adapter_id")
    if adapter_id is not None and (not isinstance(adapter_id, str) or not adapter_id.strip()):
        raise RequestError("adapter_id must be a non-empty string.", param="adapter_id")
    return ChatRequest(
        model=model,
        messages=messages,
        params=GenerationParams(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=_stops(body.get("stop")),
            seed=seed,
        ),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        adapter_id=adapter_id or None,
        base_model_sha256=expected.lower(),
    )


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RequestError("messages must be a non-empty list.", param="messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object.", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(
                f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}.",
                param=f"{where}.role",
            )
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for number, part in enumerate(content):
                if not (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    raise RequestError(
                        f"{where}.content[{number}] must be a text part "
                        '({"type": "text", "text": ...}).',
                        param=f"{where}.content[{number}]",
                    )
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content must be a string.", param=f"{where}.content")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(stop, str) and stop for stop in stops)
    ):
        raise RequestError(
            f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them.",
            param="stop",
        )
    return tuple(stops)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict, name: str, default: float, *, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{name} must be a number from {low:g} to {high:g}.", param=name)
    return float(value)


# -- responses -----------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.input_tokens + result.output_tokens,
    }


def completion(ident: str, model: str, result: GenerationResult) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(result),
    }


def chunk(
    ident: str,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
    *,
    include_usage: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if include_usage:
        body["usage"] = None
    return body


def usage_chunk(ident: str, model: str, result: GenerationResult) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(result),
    }
