"""The OpenAI chat-completions request as the gateway accepts it, and the shapes it
answers with. Pure: no database, no Django objects.

A bad request is a `GatewayError`, answered in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}` with the status the `openai` client
maps to its exception classes (400 BadRequestError, 401 AuthenticationError,
403 PermissionDeniedError, 404 NotFoundError, 422 UnprocessableEntityError,
429 RateLimitError, 5xx InternalServerError).
"""

import base64
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant")
MAX_MESSAGES = 1000
MAX_STOPS = 4
MAX_TOKENS = 32_768
MAX_METADATA_KEYS = 16
# Accepted and honoured; anything else is refused by name (as OpenAI refuses it).
KNOWN = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "user",
        "metadata",
        "response_format",
        "n",
        "variables",
        "store",
    }
)
PROMPT_MODEL = re.compile(
    r"^prompt/(?P<slug>[a-z0-9][a-z0-9_-]{0,99})(?:@(?P<label>[a-z0-9][a-z0-9_-]{0,49})|:(?P<number>[0-9]{1,9}))?$"
)
DEFAULT_LABEL = "production"


class GatewayError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(message, param=param, code=code)


@dataclass(frozen=True)
class ModelRef:
    """What `model` names: a target, or a prompt by label or version number."""

    target: str = ""
    prompt: str = ""
    label: str | None = None
    number: int | None = None

    @property
    def is_prompt(self) -> bool:
        return bool(self.prompt)


@dataclass
class ChatRequest:
    model: ModelRef
    model_name: str
    messages: list[dict[str, str]]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    user: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    response_type: str = "text"  # text, json_object, json_schema
    response_schema: dict[str, Any] | None = None
    variables: Any = None


def parse_model(value: Any) -> ModelRef:
    if not isinstance(value, str) or not value:
        raise bad("'model' must be a non-empty string.", "model")
    if value.startswith("prompt/"):
        match = PROMPT_MODEL.match(value)
        if match is None:
            raise bad(
                "A prompt model is 'prompt/<slug>', 'prompt/<slug>@<label>' or "
                f"'prompt/<slug>:<version>' (got {value[:120]!r}).",
                "model",
            )
        number = match["number"]
        label = match["label"] or (None if number else DEFAULT_LABEL)
        return ModelRef(prompt=match["slug"], label=label, number=int(number) if number else None)
    if len(value) > 100:
        raise bad("'model' is longer than 100 characters.", "model")
    return ModelRef(target=value)


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad("Only text content parts are supported.", f"{where}[{i}]")
            if not isinstance(part.get("text"), str):
                raise bad("A text part needs 'text' as a string.", f"{where}[{i}].text")
            parts.append(part["text"])
        return "".join(parts)
    raise bad("Message content must be a string or a list of text parts.", where)


def parse_messages(value: Any, *, required: bool) -> list[dict[str, str]]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        raise bad("'messages' must be a non-empty array of messages.", "messages")
    if len(value) > MAX_MESSAGES:
        raise bad(f"At most {MAX_MESSAGES} messages.", "messages")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad("Each message must be an object with 'role' and 'content'.", where)
        role = message.get("role")
        if role not in ROLES:
            raise bad(
                f"Unknown role {str(role)[:40]!r}; use one of {', '.join(ROLES)}.", f"{where}.role"
            )
        if message.get("tool_calls") or role == "tool":
            raise bad("Tool calls are not supported.", where)
        messages.append(
            {
                "role": "system" if role == "developer" else role,
                "content": _content(message.get("content"), f"{where}.content"),
            }
        )
    return messages


def _int(value: Any, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{param}' must be an integer.", param)
    if not low <= value <= high:
        raise bad(f"'{param}' must be from {low} to {high} (got {value}).", param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"'{param}' must be a number.", param)
    if not low <= value <= high:
        raise bad(f"'{param}' must be from {low:g} to {high:g} (got {value:g}).", param)
    return float(value)


def _finite(value: Any, path: str, depth: int = 0) -> None:
    """NaN and infinities are not JSON: refuse them where they are."""
    if isinstance(value, float) and not math.isfinite(value):
        raise bad("Numbers must be finite.", path)
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{path}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{path}[{i}]", depth + 1)


def _response_format(value: Any) -> tuple[str, dict[str, Any] | None]:
    if value is None:
        return "text", None
    if not isinstance(value, dict) or value.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise bad(
            "response_format.type must be text, json_object or json_schema.", "response_format.type"
        )
    kind = value["type"]
    if kind != "json_schema":
        return kind, None
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise bad(
            "response_format.json_schema must be an object with a 'schema' object.",
            "response_format.json_schema",
        )
    import jsonschema

    schema = spec.get("schema") or {}
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise bad(
            f"Not a valid JSON Schema: {exc.message}", "response_format.json_schema.schema"
        ) from None
    from apps.generation.structured import broken_ref

    found = broken_ref(schema)
    if found:
        path, reason = found
        where = f"response_format.json_schema.schema{path[1:]}"
        raise bad(f"Not a usable JSON Schema at {where}: {reason}.", where)
    return kind, schema


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.")
    unknown = sorted(k for k in body if k not in KNOWN)
    if unknown:
        raise bad(f"Unrecognized request argument supplied: {unknown[0][:60]}", unknown[0][:60])
    _finite(body, "body")
    model = parse_model(body.get("model"))
    request = ChatRequest(
        model=model,
        model_name=body["model"],
        messages=parse_messages(body.get("messages"), required=not model.is_prompt),
    )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad("'stream' must be true or false.", "stream")
    request.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None and not request.stream:
        # As OpenAI answers: the options of a stream need a stream.
        raise bad(
            "The 'stream_options' parameter is only allowed when 'stream' is true.",
            "stream_options",
        )
    if options is not None:
        if not isinstance(options, dict) or not isinstance(
            options.get("include_usage", False), bool
        ):
            raise bad(
                "stream_options.include_usage must be true or false.",
                "stream_options.include_usage",
            )
        request.include_usage = bool(options.get("include_usage"))
    given = {k: body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None}
    for name, value in given.items():
        request.max_tokens = _int(value, name, 1, MAX_TOKENS)
    if len(set(given.values())) > 1:
        raise bad("max_tokens and max_completion_tokens differ; send one.", "max_tokens")
    if body.get("temperature") is not None:
        request.temperature = _number(body["temperature"], "temperature", 0, 2)
    if body.get("top_p") is not None:
        request.top_p = _number(body["top_p"], "top_p", 0, 1)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise bad("'stop' must be a string or an array of non-empty strings.", "stop")
        if len(stops) > MAX_STOPS:
            raise bad(f"At most {MAX_STOPS} stop sequences.", "stop")
        request.stop = stops
    if body.get("seed") is not None:
        request.seed = _int(body["seed"], "seed", -(2**63), 2**63 - 1)
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str) or len(user) > 256:
            raise bad("'user' must be a string of at most 256 characters.", "user")
        request.user = user
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_KEYS:
            raise bad(
                f"'metadata' must be an object of at most {MAX_METADATA_KEYS} pairs.", "metadata"
            )
        for k, v in metadata.items():
            if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
                raise bad(
                    "metadata keys are at most 64 characters and values strings of at most 512.",
                    f"metadata.{k[:64]}",
                )
        request.metadata = metadata
    if body.get("n") not in (None, 1):
        raise bad("Only n=1 is supported.", "n")
    request.response_type, request.response_schema = _response_format(body.get("response_format"))
    if "variables" in body:
        if not model.is_prompt:
            raise bad(
                "'variables' are for prompt models (model: 'prompt/<slug>@<label>').", "variables"
            )
        request.variables = body["variables"]
    elif model.is_prompt:
        request.variables = {}
    return request


# --- responses -----------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(
    *,
    id: str,
    model: str,
    content: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk(
    *,
    id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": (
            []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        ),
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def provenance_header(manifest: dict[str, Any], signature: str, key_id: str) -> str:
    """The signed manifest as one header value: base64url of compact JSON
    {"manifest", "signature", "key_id"} (verify with POST /api/v1/provenance/verify)."""
    data = json.dumps(
        {"manifest": manifest, "signature": signature, "key_id": key_id},
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    ).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def model_entry(name: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}
