"""Values read from uploaded files (JSONL lines, CSV cells), checked the same way by
every importer: each problem is a message for that line or row, never an exception
that turns into a 500."""

import json
from typing import Any

from apps.core.validation import nul_path

# Deeper values are refused: json.loads stops near 1,000 levels with RecursionError, and
# what reads a row later (jsonschema, json.dumps, jsonb) recurses as well.
MAX_DEPTH = 64


class RowError(ValueError):
    """What is wrong with one line or row; the importer adds where."""


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


def checked(value: Any) -> Any:
    """`value` if Studio can store it: not nested past MAX_DEPTH, no NUL character."""
    if depth(value) > MAX_DEPTH:
        raise RowError(f"nested more than {MAX_DEPTH} levels deep")
    where = nul_path(value, "")
    if where is not None:
        raise RowError(f"contains a NUL character (\\u0000){f' in {where}' if where else ''}")
    return value


def json_value(text: str) -> Any:
    """One JSON text (a JSONL line, a CSV cell), parsed and checked, or RowError."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise RowError(f"nested more than {MAX_DEPTH} levels deep") from None
    return checked(value)
