from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.dateparse import parse_datetime
from django.utils.http import urlencode

from apps.audit.selectors import AuditFilter, audit_event_list_for_user, audit_squad_get_for_user
from apps.core.exceptions import ValidationFailed

PAGE = 100
FILTERS = ("action", "actor", "since", "until")


def _when(request: HttpRequest, name: str) -> object:
    raw = request.GET.get(name, "").strip()
    if not raw:
        return None
    try:
        value = parse_datetime(raw)  # None when malformed; ValueError for hour 25, day 32
    except ValueError as exc:
        raise ValidationFailed(
            f"{name}: '{raw}' is not a date and time ({exc}).", field=name
        ) from None
    if value is None:
        raise ValidationFailed(f"{name}: '{raw}' is not a date and time (ISO 8601).", field=name)
    return value


@login_required
def squad_audit(request: HttpRequest, slug: str) -> HttpResponse:
    """The squad's audit log for its compliance leads, newest first, with export links."""
    squad = audit_squad_get_for_user(user=request.user, slug=slug)
    filters = AuditFilter(
        squad=squad.slug,
        since=_when(request, "since"),
        until=_when(request, "until"),
        actor=request.GET.get("actor") or None,
        action=request.GET.get("action") or None,
    )
    events = audit_event_list_for_user(user=request.user, filters=filters)
    # The export links carry the filters that are set, and only those.
    export_query = urlencode(
        {"squad": squad.slug}
        | {name: request.GET[name].strip() for name in FILTERS if request.GET.get(name, "").strip()}
    )
    return render(
        request,
        "audit/squad.html",
        {
            "squad": squad,
            "events": events.order_by("-sequence")[:PAGE],
            "filters": filters,
            "export_query": export_query,
            "page_size": PAGE,
        },
    )
