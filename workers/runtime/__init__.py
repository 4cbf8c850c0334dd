"""The model runtime that runs on workers. torch and transformers are imported lazily,
inside functions, so the web process can import this package without them."""

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationResult:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: Literal["stop", "length"] = "stop"
    extra: dict = field(default_factory=dict)


@dataclass
class StreamDelta:
    """One piece of a streamed answer: text, and on the last pieces the finish reason and
    the usage the server reported (None when it did not)."""

    text: str = ""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class BackendError(Exception):
    """A model call failed; `retryable` says whether trying again may help; `detail` is
    the server's OpenAI-shaped `error` object when a server refused the request."""

    def __init__(self, message: str, *, retryable: bool = False, detail: dict | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.detail = detail
