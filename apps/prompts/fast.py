"""The runtime fetch as a plain Django view.

`GET /api/v1/squads/{squad}/prompts/{slug}` is what production apps call on every
request. django-ninja's per-request machinery (parameter models, response
objects) costs more than the fetch itself, so GET and HEAD are answered here with
the same authentication, service (`runtime.fetch`), errors and headers as the
ninja operation — which still documents the endpoint in OpenAPI and serves the
other methods on this path.

The view is exempt from Django's CSRF middleware like every ninja operation: the
methods it delegates get the API's own rule (a session needs the CSRF token, a bearer
token does not, `studio.api.BearerOrSession`), and GET/HEAD are safe methods.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLResolver
from django.urls.resolvers import RoutePattern
from django.views.decorators.csrf import csrf_exempt

from apps.core.exceptions import (
    ApplicationError,
    AuthenticationFailed,
    PermissionDenied,
    ValidationFailed,
)
from apps.core.views import parse_int
from apps.gateway.services import KeyGrant, is_service_key, service_key_authenticate
from apps.prompts import runtime
from apps.telemetry.recording import bind_prompt

DEFAULT_LABEL = "production"
_ninja: URLResolver | None = None
_auth: Callable[[HttpRequest], object] | None = None


def _delegate(request: HttpRequest) -> HttpResponse:
    """Other methods (and POST …/prompts/check, which this pattern also matches) go to
    the ninja API exactly as if this view did not exist."""
    global _ninja
    if _ninja is None:
        from studio.api import api

        patterns, app_name, namespace = api.urls
        _ninja = URLResolver(
            RoutePattern("api/v1/"), patterns, app_name=app_name, namespace=namespace
        )
    match = _ninja.resolve(request.path_info.lstrip("/"))
    return match.func(request, *match.args, **match.kwargs)


def service_key_grant(request: HttpRequest) -> KeyGrant | None:
    """A service key's grant when the bearer is one (sk-studio-…), else None."""
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not is_service_key(raw):
        return None
    grant = service_key_authenticate(raw=raw)
    if not grant.allow_prompt_fetch:
        raise PermissionDenied("This service key has no prompt-fetch scope.")
    return grant


@csrf_exempt
def prompt_fetch(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return _delegate(request)
    global _auth
    if _auth is None:  # stateless, like the instance the ninja API holds
        from studio.api import BearerOrSession

        _auth = BearerOrSession()
    try:
        grant = service_key_grant(request)
        user = None if grant is not None else _auth(request)
        label = request.GET.get("label")
        raw_version = request.GET.get("version")
        version = parse_int(raw_version, field="version", label="version")
        if raw_version is not None and version is None:  # "?version=" as ninja has it
            raise ValidationFailed("version must be a whole number (got '').", field="version")
        if label is None and version is None:
            label = DEFAULT_LABEL
        bind_prompt(slug, label=label, version=version)
        fetched = runtime.fetch(
            user=user,
            squad_slug=squad,
            template_slug=slug,
            label=label,
            version=version,
            grant=grant,
        )
    except ApplicationError as exc:
        response = JsonResponse(exc.as_dict(), status=exc.status_code)
        if isinstance(exc, AuthenticationFailed):
            response["WWW-Authenticate"] = 'Bearer realm="studio"'
        return response
    if runtime.etag_matches(request.headers.get("If-None-Match"), fetched.etag):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(fetched.body, content_type="application/json")
    response["ETag"] = fetched.etag
    response["Cache-Control"] = "private, no-cache"
    return response
