"""The caller's business context: `X-Studio-Context: use_case=contract_review; tier=gold`.

Bound to every log line of the request and stored on the generations it creates
(`Generation.context`). Checked strictly — a caller whose context is silently dropped
would find its dashboards empty much later — so a malformed header is refused with 400
naming the pair that is wrong.
"""

import re

from django.http import HttpRequest

from apps.core.exceptions import ApplicationError

HEADER = "X-Studio-Context"
MAX_HEADER_BYTES = 1024
MAX_PAIRS = 10
MAX_VALUE_CHARS = 128
KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")


class ContextRefused(ApplicationError):
    """A malformed X-Studio-Context header; `extra` lists every problem by pair."""

    status_code = 400


def _size(raw: str) -> int:
    # WSGI hands headers over decoded as latin-1: one character per byte on the wire.
    try:
        return len(raw.encode("latin-1"))
    except UnicodeEncodeError:
        return len(raw.encode("utf-8", "surrogatepass"))


def parse_context(raw: str) -> dict[str, str]:
    """`key=value; key2=value2` → {"key": "value", ...}. Keys match KEY, values are
    printable, non-empty and at most MAX_VALUE_CHARS characters, at most MAX_PAIRS pairs,
    the header at most MAX_HEADER_BYTES bytes; otherwise ContextRefused."""
    if _size(raw) > MAX_HEADER_BYTES:
        raise ContextRefused(
            f"{HEADER} is {_size(raw)} bytes; at most {MAX_HEADER_BYTES} are accepted.",
            field=HEADER,
        )
    pairs = [piece.strip() for piece in raw.split(";")]
    pairs = [piece for piece in pairs if piece]
    if len(pairs) > MAX_PAIRS:
        raise ContextRefused(
            f"{HEADER} has {len(pairs)} pairs; at most {MAX_PAIRS} are accepted.", field=HEADER
        )
    context: dict[str, str] = {}
    problems: list[dict[str, object]] = []
    for number, pair in enumerate(pairs, start=1):
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        shown = pair if len(pair) <= 60 else pair[:57] + "..."
        if not sep:
            message = "expected key=value"
        elif not KEY.fullmatch(key):
            message = (
                "the key must start with a lowercase letter and have at most 32 lowercase "
                "letters, digits or underscores"
            )
        elif key in context:
            message = f"'{key}' is given twice"
        elif not value:
            message = "the value is empty"
        elif len(value) > MAX_VALUE_CHARS:
            message = f"the value has {len(value)} characters; at most {MAX_VALUE_CHARS}"
        elif not value.isprintable():
            message = "the value contains a non-printable character"
        else:
            context[key] = value
            continue
        problems.append({"pair": number, "text": shown, "message": message})
    if problems:
        summary = "; ".join(f"pair {p['pair']} ('{p['text']}'): {p['message']}" for p in problems)
        raise ContextRefused(f"Malformed {HEADER} header: {summary}.", field=HEADER, extra=problems)
    return context


def request_context(request: HttpRequest | None) -> dict[str, str]:
    """The context the telemetry middleware parsed for this request ({} without one)."""
    return getattr(request, "studio_context", None) or {}
