"""Validation shared by every app's services, so the API, the views and the admin all
give the same messages."""

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
