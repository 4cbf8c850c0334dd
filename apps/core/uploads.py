"""Values read from uploaded files (JSONL lines, CSV cells), checked the same way by
every importer: each problem is a message for that line or row, never an exception
that turns into a 500."""

from typing import Any

from apps.core.exceptions import ValidationFailed
from apps.core.validation import MAX_DEPTH, depth, nul_path, parse_json

__all__ = ["MAX_DEPTH", "RowError", "checked", "depth", "json_value"]


class RowError(ValueError):
    """What is wrong with one line or row; the importer adds where."""


def checked(value: Any) -> Any:
    """`value` if Studio can store it: not nested past MAX_DEPTH, no NUL character."""
    if depth(value) > MAX_DEPTH:
        raise RowError(f"nested more than {MAX_DEPTH} levels deep")
    where = nul_path(value, "")
    if where is not None:
        raise RowError(f"contains a NUL character (\\u0000){f' in {where}' if where else ''}")
    return value


def json_value(text: str) -> Any:
    """One JSON text (a JSONL line, a CSV cell), parsed by parse_json and checked, or
    RowError saying what is wrong (the importer adds the line or row)."""
    try:
        value = parse_json(text, field="")
    except ValidationFailed as exc:
        raise RowError(exc.message.rstrip(".")) from None
    return checked(value)
