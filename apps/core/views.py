"""Small helpers every app's HTML views share: which template an htmx request gets, which
errors a form shows inline, and how a number typed into a form becomes a value."""

import math
from typing import Any

from django.http import HttpRequest

from apps.core.exceptions import ApplicationError, PermissionDenied, ValidationFailed
from apps.core.http import MAX_INT


def partial_template(request: HttpRequest, page: str, partial: str) -> str:
    """`page#partial` for an htmx swap; the whole page otherwise (also when htmx restores
    a page missing from its history cache)."""
    if request.htmx and not request.htmx.history_restore_request:
        return f"{page}#{partial}"
    return page


def form_error(exc: ApplicationError) -> ApplicationError:
    """`exc` when a form shows it inline. A refused permission is not one of them: the
    form was not offered, so it is raised again and answers like any forbidden page."""
    if isinstance(exc, PermissionDenied):
        raise exc
    return exc


def _label(field: str) -> str:
    return field.replace("_", " ").capitalize()


def parse_int(
    raw: str | None, *, field: str, label: str | None = None, minimum: int | None = None
) -> int | None:
    """A whole number typed into a form or a query string; None when empty;
    ValidationFailed on `field` naming what was typed otherwise, when it is below
    `minimum`, or outside ±MAX_INT (what the database and JSON hold exactly)."""
    raw = (raw or "").strip()
    if not raw:
        return None
    label = label or _label(field)
    shown = raw if len(raw) <= 40 else raw[:40] + "…"
    try:
        # int() of a 5,000-digit string is slow and raises past 4,300 digits anyway
        value = int(raw) if len(raw) <= 40 else None
    except ValueError:
        value = None
    if value is None:
        raise ValidationFailed(f"{label} must be a whole number (got '{shown}').", field=field)
    if minimum is not None and value < minimum:
        what = "cannot be negative" if minimum == 0 else f"must be at least {minimum}"
        raise ValidationFailed(f"{label} {what} (got {shown}).", field=field)
    if not -MAX_INT <= value <= MAX_INT:
        raise ValidationFailed(
            f"{label} must be between {-MAX_INT if minimum is None else minimum} and "
            f"{MAX_INT} (got {shown}).",
            field=field,
        )
    return value


def parse_float(raw: str | None, *, field: str, label: str | None = None) -> float | None:
    """A finite number typed into a form; None when empty; ValidationFailed on `field`."""
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValidationFailed(
            f"{label or _label(field)} must be a number (got '{raw}').", field=field
        )
    return value


def number_or_text(raw: str | None) -> Any:
    """A typed number for a service (int when whole, else a finite float), or the text
    itself so that the service names the field and what it got; None when empty."""
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return raw
    return value if math.isfinite(value) else raw
