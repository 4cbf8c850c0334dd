"""The runtime fetch as a plain Django view (apps/core/plainapi.py).

`GET /api/v1/squads/{squad}/prompts/{slug}` is what production apps call on every
request: GET and HEAD are answered here with the same authentication, service
(`runtime.fetch`), errors and headers as the ninja operation — which still documents
the endpoint in OpenAPI and serves the other methods on this path (and POST
…/prompts/check, which this pattern also matches).
"""

from django.http import HttpRequest, HttpResponse

from apps.core.exceptions import PermissionDenied, ValidationFailed
from apps.core.plainapi import authenticate, plain_get
from apps.core.views import parse_int
from apps.gateway.services import KeyGrant, is_service_key, service_key_authenticate
from apps.prompts import runtime
from apps.telemetry.recording import bind_prompt

DEFAULT_LABEL = "production"


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


def _caller(request: HttpRequest) -> KeyGrant | object:
    """A service key's grant, or the user behind a personal token or session."""
    grant = service_key_grant(request)
    return grant if grant is not None else authenticate(request)


@plain_get(auth=_caller)
def prompt_fetch(request: HttpRequest, caller: object, squad: str, slug: str) -> HttpResponse:
    grant = caller if isinstance(caller, KeyGrant) else None
    label = request.GET.get("label")
    raw_version = request.GET.get("version")
    version = parse_int(raw_version, field="version", label="version")
    if raw_version is not None and version is None:  # "?version=" as ninja has it
        raise ValidationFailed("version must be a whole number (got '').", field="version")
    if label is None and version is None:
        label = DEFAULT_LABEL
    bind_prompt(slug, label=label, version=version)
    fetched = runtime.fetch(
        user=None if grant is not None else caller,
        squad_slug=squad,
        template_slug=slug,
        label=label,
        version=version,
        grant=grant,
    )
    if runtime.etag_matches(request.headers.get("If-None-Match"), fetched.etag):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(fetched.body, content_type="application/json")
    response["ETag"] = fetched.etag
    response["Cache-Control"] = "private, no-cache"
    return response
