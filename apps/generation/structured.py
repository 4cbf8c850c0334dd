"""Structured output: find the JSON in a model's answer, validate it against the
version's output schema, and build the one repair request that feeds the errors back."""

import json
import re
from typing import Any

import jsonschema

from apps.core.exceptions import ValidationFailed
from apps.core.validation import parse_json

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class NotJSON(ValueError):
    pass


def extract_json(text: str) -> Any:
    """Parse the answer as JSON, tolerating a fenced ```json block or prose around one
    object/array. Raises NotJSON with the parser's message."""
    candidates = [m.group(1).strip() for m in _FENCE.finditer(text)]
    stripped = text.strip()
    candidates.append(stripped)
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = stripped.find(opener), stripped.rfind(closer)
        if 0 <= start < end:
            candidates.append(stripped[start : end + 1])
    last_error = "empty output"
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return parse_json(candidate, field="output")
        except ValidationFailed as exc:  # bad syntax, "[[[[…", a 5,000-digit number
            last_error = exc.message.rstrip(".")
    raise NotJSON(f"output is not JSON: {last_error}")


def check_output(text: str, schema: dict[str, Any] | None) -> tuple[Any, list[dict[str, str]]]:
    """(parsed value, errors). Without a schema any JSON is accepted."""
    try:
        value = extract_json(text)
    except NotJSON as exc:
        return None, [{"path": "$", "message": str(exc)}]
    if schema is None:
        return value, []
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    return value, [{"path": e.json_path, "message": e.message} for e in errors]


def repair_conversation(
    messages: list[dict[str, str]], output: str, errors: list[dict[str, str]], schema: Any
) -> list[dict[str, str]]:
    listed = "\n".join(f"- {e['path']}: {e['message']}" for e in errors[:10])
    return [
        *messages,
        {"role": "assistant", "content": output},
        {
            "role": "user",
            "content": (
                "Your answer was not valid JSON for the required schema:\n"
                f"{listed}\n"
                "Reply again with only the JSON value, no prose, matching this JSON Schema:\n"
                f"{json.dumps(schema, ensure_ascii=False) if schema else 'any JSON value'}"
            ),
        },
    ]
