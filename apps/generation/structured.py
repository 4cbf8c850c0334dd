"""Structured output: find the JSON in a model's answer, validate it against the
version's output schema, and build the one repair request that feeds the errors back."""

import json
import re
from typing import Any

import jsonschema
from referencing.exceptions import Unresolvable

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
    try:
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    except Unresolvable:  # a schema stored before refs were checked at save time
        found = broken_ref(schema)
        reason = found[1] if found else "a $ref does not resolve"
        return value, [{"path": "$", "message": f"the output schema is unusable: {reason}"}]
    return value, [{"path": e.json_path, "message": e.message} for e in errors]


# Keywords whose values are data, not subschemas: a "$ref" key inside them is not a ref.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})


def broken_ref(schema: dict[str, Any]) -> tuple[str, str] | None:
    """(JSON path, reason) of the first `$ref` in `schema` that does not resolve within
    the schema itself (a missing `$defs` entry, a bad pointer, any remote URL: schemas are
    never fetched), or None. check_schema accepts such refs; validating would fail later."""
    from referencing import Registry
    from referencing.exceptions import PointerToNowhere
    from referencing.jsonschema import DRAFT202012

    def walk(node: Any, resolver: Any, path: str) -> tuple[str, str] | None:
        if isinstance(node, list):
            for index, item in enumerate(node):
                found = walk(item, resolver, f"{path}[{index}]")
                if found:
                    return found
            return None
        if not isinstance(node, dict):
            return None
        if isinstance(node.get("$id"), str) and path != "$":
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except PointerToNowhere:
                return f"{path}.$ref", f"$ref {ref[:200]!r} points to nothing in the schema"
            except Unresolvable:
                return (
                    f"{path}.$ref",
                    f"$ref {ref[:200]!r} cannot be resolved: refs must point inside the "
                    "schema (other schemas are never fetched)",
                )
        for key, child in node.items():
            if key not in _DATA_KEYWORDS:
                found = walk(child, resolver, f"{path}.{key}")
                if found:
                    return found
        return None

    resource = DRAFT202012.create_resource(schema)
    root = Registry().with_resource(uri=schema.get("$id", ""), resource=resource)
    try:
        return walk(schema, root.resolver(base_uri=schema.get("$id", "")), "$")
    except RecursionError:
        return "$", "the schema is nested too deeply"


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
