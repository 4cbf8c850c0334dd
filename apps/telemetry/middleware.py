"""Per request: a request id, the caller's business context, log bindings, one access
line and the latency histogram. First in MIDDLEWARE, so its timing covers the rest."""

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.telemetry import metrics
from apps.telemetry.context import HEADER, ContextRefused, parse_context

REQUEST_ID_HEADER = "X-Request-ID"
# What other systems put in X-Request-ID (uuids, trace ids, ulids); anything else is
# replaced rather than copied into every log line.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
UNMATCHED = "<unmatched>"

access_logger = structlog.get_logger("studio.access")


def request_id_from(request: HttpRequest) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def route_of(request: HttpRequest) -> str:
    """The matched URL pattern ("squads/<slug:squad>/prompts/"), never the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED
    # The root page's pattern is "" (matched, so "/", not unmatched).
    return "/" + (match.route or "").lstrip("^").rstrip("$")


def user_label(user: Any) -> str | None:
    return user.get_username() if user is not None and user.is_authenticated else None


def bind_user(user: Any) -> None:
    """Bind the signed-in or token user (called again by token authentication, which
    happens inside the API view)."""
    name = user_label(user)
    if name is not None:
        structlog.contextvars.bind_contextvars(user=name)


class RequestTelemetryMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request_id = request_id_from(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            context = parse_context(request.headers.get(HEADER, ""))
        except ContextRefused as exc:
            response = self._refuse(request, exc)
        else:
            request.studio_context = context  # type: ignore[attr-defined]
            if context:
                structlog.contextvars.bind_contextvars(context=context)
            response = self.get_response(request)
        elapsed = time.perf_counter() - started
        route = route_of(request)
        bind_user(getattr(request, "user", None))
        response[REQUEST_ID_HEADER] = request_id
        metrics.request_finished(
            view=route, method=request.method or "", status=response.status_code, seconds=elapsed
        )
        access_logger.info(
            "request",
            method=request.method,
            route=route,
            status=response.status_code,
            duration_ms=round(elapsed * 1000, 2),
        )
        # Not cleared here: Django logs 4xx/5xx ("django.request") after the middleware
        # chain returns, and that line should carry the request id too; the bindings go
        # when the response is closed (request_finished, apps.TelemetryConfig).
        return response

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., HttpResponse],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> None:
        squad = view_kwargs.get("squad")
        if isinstance(squad, str):
            structlog.contextvars.bind_contextvars(squad=squad)
        bind_user(getattr(request, "user", None))

    @staticmethod
    def _refuse(request: HttpRequest, exc: ContextRefused) -> HttpResponse:
        if request.path_info.startswith("/api/"):
            return JsonResponse(exc.as_dict(), status=exc.status_code)
        return HttpResponse(exc.message, status=exc.status_code, content_type="text/plain")
