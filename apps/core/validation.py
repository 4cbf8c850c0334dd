"""Validation shared by every app's services, so the API, the views and the admin all
give the same messages."""

import json
import re
import sys
from typing import Any

from apps.core.exceptions import ValidationFailed

# Squads use hyphens only (their slug is in every URL); prompts, labels, tags, targets
# and datasets also allow underscores.
HYPHENS = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
HYPHENS_OR_UNDERSCORES = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")

# JSON values nested deeper are refused: json.loads stops near 1,000 levels with
# RecursionError, and what reads a value later (jsonschema, json.dumps, jsonb) recurses.
MAX_DEPTH = 64
# Python refuses to turn a longer digit string into an int (sys.get_int_max_str_digits);
# json.loads then raises a plain ValueError, not JSONDecodeError.
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300
_LONG_INTEGER = re.compile(rf"[0-9]{{{MAX_INT_DIGITS + 1},}}")


def clean_slug(value: str | None, *, field: str, limit: int, underscores: bool = True) -> str:
    """`value` stripped, or ValidationFailed on `field` saying what is wrong with it."""
    label = field.capitalize()
    value = (value or "").strip()
    if not value:
        raise ValidationFailed(f"{label} must not be empty.", field=field)
    if len(value) > limit:
        raise ValidationFailed(
            f"{label} is {len(value)} characters long; the limit is {limit}.", field=field
        )
    if underscores and not HYPHENS_OR_UNDERSCORES.match(value):
        raise ValidationFailed(
            f"{label} may contain lowercase letters, digits and single '-' or '_' "
            f"between them (got '{value}').",
            field=field,
        )
    if not underscores and not HYPHENS.match(value):
        raise ValidationFailed(
            f"{label} may contain only lowercase letters, digits and single hyphens between "
            f"them (got '{value}').",
            field=field,
        )
    return value


def depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of `index` in `text`."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _at(line: int, column: int, *, labelled: bool) -> str:
    """Where in the text: a one-line JSONL line or CSV cell needs only the column."""
    return f"line {line}, column {column}" if labelled or line > 1 else f"column {column}"


def parse_json(raw: str | bytes, *, field: str, label: str = "") -> Any:
    """The one reader of JSON a person sent (a form field, a JSONL line, a CSV cell, a
    body): the value, or ValidationFailed on `field` saying what broke and where. It
    catches everything json.loads raises on hostile text: JSONDecodeError, the plain
    ValueError for an integer past Python's 4,300-digit limit (or bytes that are not
    UTF-8), and RecursionError; values nested past MAX_DEPTH are refused too, since what
    reads them later (jsonschema, json.dumps, jsonb) recurses as well. The message starts
    with `label` when given ("Variables is ..."), else with the problem itself, for
    importers that prefix a line or row. `extra` has "reason" (syntax, digits, depth)
    and, when known, "line" and "column"."""
    lead = f"{label} is " if label else ""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            f"{lead}not valid JSON: {exc.msg} at "
            f"{_at(exc.lineno, exc.colno, labelled=bool(label))}.",
            field=field,
            extra={"reason": "syntax", "line": exc.lineno, "column": exc.colno},
        ) from None
    except RecursionError:
        too_deep = True
    except ValueError as exc:  # not a JSONDecodeError: a huge integer or bad UTF-8
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        digits = _LONG_INTEGER.search(text)
        if digits is None:
            raise ValidationFailed(
                f"{lead}not valid JSON: {exc}.", field=field, extra={"reason": "syntax"}
            ) from None
        line, column = _position(text, digits.start())
        raise ValidationFailed(
            f"{lead}not usable JSON: a number has more than {MAX_INT_DIGITS:,} digits "
            f"(at {_at(line, column, labelled=bool(label))}).",
            field=field,
            extra={"reason": "digits", "line": line, "column": column},
        ) from None
    else:
        too_deep = depth(value) > MAX_DEPTH
    if too_deep:
        raise ValidationFailed(
            f"{lead}nested more than {MAX_DEPTH} levels deep.",
            field=field,
            extra={"reason": "depth"},
        )
    return value


def nul_path(value: Any, path: str) -> str | None:
    """The path of the first text (value or key) in `value` holding a NUL character."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = nul_path(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found:
                return found
    return None


def clean_number(value: Any, *, field: str, kind: type, low: float, high: float) -> Any:
    """`value` as `kind` (int or float) within low..high, or ValidationFailed on `field`
    saying what is wrong with it (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed(f"{field} must be a number (got {value!r}).", field=field)
    if kind is int and value != int(value):
        raise ValidationFailed(f"{field} must be a whole number (got {value}).", field=field)
    if not low <= value <= high:
        raise ValidationFailed(f"{field} must be {low} to {high} (got {value}).", field=field)
    return kind(value)
