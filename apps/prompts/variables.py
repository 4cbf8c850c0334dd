"""Variables built from a prompt's input schema: example values that pass the schema, the
fields of the variables form (the editor's preview, the playground and the batch page
share it), and sample rows for a batch or dataset file.

`example_value` reads the keywords a schema uses to narrow a value (examples, default,
const, enum, type, bounds, lengths, formats, required, items, anyOf/oneOf/allOf) and
builds the first value that fits; `example_variables` then checks the result with the
same validator as every render and says what still fails (a `pattern` it cannot invent a
match for, say), so callers never present an invalid example as a valid one.

A generated example is bounded (EXAMPLE_LIMIT characters of JSON, STRING_LIMIT per
string, ITEMS_LIMIT per array): a schema asking for a 50,000,000-character string or
arrays of 300 x 300 x 300 items gets a best-effort example that is cut short, with a note
saying where, instead of a file of hundreds of megabytes. Bounds that overflow a float
(minimum 1e308 with multipleOf 0.1) give the bound itself rather than an OverflowError.
"""

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from apps.core.exceptions import ValidationFailed
from apps.core.validation import parse_json
from apps.prompts.contracts import validate_variables

FORMAT_EXAMPLES = {
    "email": "ada@example.com",
    "date": "2026-01-31",
    "date-time": "2026-01-31T09:30:00Z",
    "time": "09:30:00Z",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}
TEXT_LIMIT = 200  # a longer string or a multi-line one gets a textarea
EXAMPLE_LIMIT = 10_000  # characters of JSON per example: a 3-row sample file stays < 64 KB
STRING_LIMIT = 4_096
ITEMS_LIMIT = 100


@dataclass
class _Budget:
    """What is left of EXAMPLE_LIMIT while an example is built, and where it was cut."""

    left: int = EXAMPLE_LIMIT
    cut: list[str] = field(default_factory=list)

    def spend(self, value: Any) -> Any:
        self.left -= len(json.dumps(value, ensure_ascii=False))
        return value


def _valid(node: dict, value: Any) -> bool:
    return not validate_variables(node, value)


def _kind(node: dict) -> str | None:
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or kind
        return kinds[0] if kinds else None
    if kind is None and "properties" in node:
        return "object"
    return kind


def _finite(value: Any) -> float | None:
    """A bound the arithmetic below can use: a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _number(node: dict, integer: bool) -> int | float:
    low = _finite(node.get("minimum"))
    high = _finite(node.get("maximum"))
    if _finite(node.get("exclusiveMinimum")) is not None:
        low = node["exclusiveMinimum"] + (1 if integer else 1e-6)
    if _finite(node.get("exclusiveMaximum")) is not None:
        high = node["exclusiveMaximum"] - (1 if integer else 1e-6)
    value: float = 1
    if low is not None:
        value = max(value, low)
    if high is not None and value > high:
        value = high if low is None else low
    fallback = value
    try:
        step = _finite(node.get("multipleOf"))
        if step and step > 0:
            value = math.ceil(value / step) * step
            if high is not None and value > high:
                value = math.floor(high / step) * step
        if not math.isfinite(value):
            value = fallback  # 1e308 / 0.1 overflows: the bound is the best example
        if integer:
            return math.ceil(value)
        return int(value) if float(value).is_integer() else value
    except (OverflowError, ValueError):
        return fallback if not integer or not math.isfinite(fallback) else math.ceil(fallback)


def _string(node: dict, budget: _Budget, path: str) -> str:
    fmt = node.get("format")
    text = FORMAT_EXAMPLES.get(fmt, "example")
    low, high = node.get("minLength", 0), node.get("maxLength")
    if high is not None and len(text) > high:
        text = text[:high]
    if len(text) < low and fmt is None:
        room = max(min(STRING_LIMIT, budget.left - 2), len(text))
        if low > room:
            budget.cut.append(f"{path}: a string of {low:,} characters is asked for")
        length = min(low, room)
        text = (text + " " + "x" * length)[:length]
    return budget.spend(text)


def _array(node: dict, budget: _Budget, path: str) -> list:
    items = node.get("items") if isinstance(node.get("items"), dict) else {}
    count = max(node.get("minItems", 1), 0)
    if node.get("maxItems") is not None:
        count = min(count, node["maxItems"])
    if count <= 0:
        return []
    asked = count
    value = _example(items, budget, f"{path}[0]")
    # Each further item costs what the first did; stop at ITEMS_LIMIT or the budget.
    each = len(json.dumps(value, ensure_ascii=False)) + 1
    count = min(count, ITEMS_LIMIT, 1 + max(budget.left, 0) // each)
    budget.left -= (count - 1) * each
    if count < asked:
        budget.cut.append(f"{path}: {asked:,} items are asked for; the example has {count}")
    if node.get("uniqueItems") and isinstance(value, str):
        return [f"{value}{i + 1}" if i else value for i in range(count)]
    if node.get("uniqueItems") and isinstance(value, int | float) and not isinstance(value, bool):
        return [value + i for i in range(count)]
    return [value for _ in range(count)]


def example_value(node: Any) -> Any:
    """A value for the schema `node`, built from its keywords (see the module docstring),
    within EXAMPLE_LIMIT."""
    return _example(node, _Budget(), "$")


def _example(node: Any, budget: _Budget, path: str) -> Any:
    if not isinstance(node, dict):
        return None
    for candidate in node.get("examples") or []:
        if _valid(node, candidate):
            return budget.spend(candidate)  # the schema's own text: as long as the schema
    for key in ("default", "const"):
        if key in node and _valid(node, node[key]):
            return budget.spend(node[key])
    if node.get("enum"):
        return budget.spend(node["enum"][0])
    if node.get("allOf"):
        merged = dict(node)
        for part in merged.pop("allOf"):
            if isinstance(part, dict):
                merged = {**part, **merged}
        return _example(merged, budget, path)
    for key in ("anyOf", "oneOf"):
        if node.get(key):
            return _example(node[key][0], budget, path)
    kind = _kind(node)
    if kind == "object":
        properties = node.get("properties") or {}
        return {name: _example(sub, budget, f"{path}.{name}") for name, sub in properties.items()}
    if kind == "array":
        return _array(node, budget, path)
    if kind == "string":
        return _string(node, budget, path)
    if kind in ("integer", "number"):
        return budget.spend(_number(node, kind == "integer"))
    if kind == "boolean":
        return False
    return None


@dataclass
class Example:
    value: Any
    errors: list[dict[str, str]] = field(default_factory=list)
    # Where the example was cut short of what the schema asks (see EXAMPLE_LIMIT).
    cut: list[str] = field(default_factory=list)


def example_variables(schema: Any) -> Example:
    """Example variables for an input schema, and the schema errors they still have
    ([] whenever the schema's keywords allow building a valid value within the limits)."""
    budget = _Budget()
    value = _example(schema if isinstance(schema, dict) else {}, budget, "$")
    if not isinstance(value, dict):
        value = {}
    errors = validate_variables(schema, value) if isinstance(schema, dict) else []
    return Example(value, errors, budget.cut)


def sample_rows(schema: dict, count: int = 3) -> list[dict[str, Any]]:
    """Rows for a sample file: the example, then variations that keep it valid (another
    enum choice, a larger number within the bounds), so a sample shows the range."""
    example = example_variables(schema)
    base = example.value
    rows = [base]
    properties = schema.get("properties") or {}
    for n in range(1, count):
        row = json.loads(json.dumps(base))
        for name, node in properties.items():
            if not isinstance(node, dict):
                continue
            if node.get("enum") and len(node["enum"]) > 1:
                row[name] = node["enum"][n % len(node["enum"])]
            elif _kind(node) in ("integer", "number") and isinstance(row.get(name), int | float):
                bumped = row[name] + n * (node.get("multipleOf") or 1)
                if _valid(node, bumped):
                    row[name] = bumped
            elif _kind(node) == "string" and row.get(name) == "example" and not node.get("format"):
                candidate = f"example {n + 1}"
                if _valid(node, candidate):
                    row[name] = candidate
        rows.append(row if _valid(schema, row) else base)
    return rows


def _csv_cell(value: Any) -> str:
    """A CSV cell the batch reader reads back as `value`: it parses cells as JSON first,
    so a string that would parse (a number-like "30") is written JSON-quoted."""
    if isinstance(value, str):
        try:
            parse_json(value, field="")
        except ValidationFailed as exc:
            if exc.extra["reason"] == "syntax":
                return value
    return json.dumps(value, ensure_ascii=False)


def sample_file(schema: dict, fmt: str, count: int = 3) -> str:
    """A sample batch file of valid rows: JSONL (one object per line) or CSV (a header of
    the variable names; values that are not plain strings as JSON)."""
    rows = sample_rows(schema, count)
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    names = list((schema.get("properties") or {}).keys())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_cell(row[n]) if n in row else "" for n in names])
    return out.getvalue()


# --- the variables form ----------------------------------------------------------------


@dataclass(frozen=True)
class VariableField:
    name: str
    label: str
    kind: str  # select, integer, number, boolean, text, textarea, json
    required: bool
    value: str
    description: str = ""
    options: tuple[tuple[str, str], ...] = ()  # (JSON value, label)
    minimum: float | None = None
    maximum: float | None = None
    step: str = ""
    min_length: int | None = None
    max_length: int | None = None


def _bound(node: dict, inclusive: str, exclusive: str, integer: bool, sign: int) -> float | None:
    if node.get(inclusive) is not None:
        return node[inclusive]
    if node.get(exclusive) is not None:
        return node[exclusive] + sign * (1 if integer else 0)
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def variable_fields(schema: Any, values: Any) -> list[VariableField]:
    """One field per top-level property of the input schema, filled from `values`: a
    select for an enum (JSON-encoded options, so numbers stay numbers), a number input
    with the schema's bounds, a checkbox for a boolean, text or a textarea for a string,
    JSON for an object or array."""
    if not isinstance(schema, dict):
        return []
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    values = values if isinstance(values, dict) else {}
    out = []
    for name, node in properties.items():
        if not isinstance(node, dict):
            continue
        kind = _kind(node)
        value = values.get(name)
        common = {
            "name": name,
            "label": node.get("title") or name.replace("_", " ").capitalize(),
            "required": name in required,
            "description": node.get("description", ""),
        }
        if node.get("enum"):
            out.append(
                VariableField(
                    kind="select",
                    options=tuple(
                        (json.dumps(o, ensure_ascii=False), _text(o)) for o in node["enum"]
                    ),
                    value=json.dumps(value, ensure_ascii=False) if name in values else "",
                    **common,
                )
            )
        elif kind in ("integer", "number"):
            integer = kind == "integer"
            step = node.get("multipleOf")
            out.append(
                VariableField(
                    kind=kind,
                    value=_text(value),
                    minimum=_bound(node, "minimum", "exclusiveMinimum", integer, 1),
                    maximum=_bound(node, "maximum", "exclusiveMaximum", integer, -1),
                    step=str(step) if step else ("1" if integer else "any"),
                    **common,
                )
            )
        elif kind == "boolean":
            checked = "true" if value is True else ""
            out.append(VariableField(kind="boolean", value=checked, **common))
        elif kind == "string":
            long = (node.get("maxLength") or TEXT_LIMIT + 1) > TEXT_LIMIT or "\n" in _text(value)
            out.append(
                VariableField(
                    kind="textarea" if long else "text",
                    value=_text(value),
                    min_length=node.get("minLength"),
                    max_length=node.get("maxLength"),
                    **common,
                )
            )
        else:
            out.append(VariableField(kind="json", value=_text(value), **common))
    return out


def schema_key(schema: Any) -> str:
    """A short digest of a schema: the editor rebuilds its form when it changes."""
    raw = json.dumps(schema, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
