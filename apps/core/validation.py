"""Validation shared by every app's services, so the API, the views and the admin all
give the same messages."""

import json
import re
from typing import Any

from apps.core.exceptions import ValidationFailed

# Squads use hyphens only (their slug is in every URL); prompts, labels, tags, targets
# and datasets also allow underscores.
HYPHENS = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
HYPHENS_OR_UNDERSCORES = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")


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


def parse_json(raw: str, *, field: str, label: str) -> Any:
    """JSON typed into a form field (variables, schemas), or ValidationFailed on `field`
    saying where it broke (`extra` has line and column). Deep nesting is refused rather
    than left to crash the parser or what reads the value later."""
    from apps.core.uploads import MAX_DEPTH, depth

    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            f"{label} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
            field=field,
            extra={"line": exc.lineno, "column": exc.colno},
        ) from None
    except RecursionError:
        too_deep = True
    else:
        too_deep = depth(value) > MAX_DEPTH
    if too_deep:
        raise ValidationFailed(f"{label} is nested more than {MAX_DEPTH} levels deep.", field=field)
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
