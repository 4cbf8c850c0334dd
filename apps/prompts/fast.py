"""The runtime fetch as a plain Django view (apps/core/plainapi.py).

`GET /api/v1/squads/{squad}/prompts/{slug}` is what production apps call on every
request: GET and HEAD are answered here with the same authentication, service
(`runtime.fetch`), errors and headers as the ninja operation — which still documents
the endpoint in OpenAPI and serves the other methods on this path (and POST
…/prompts/check, which this pattern also matches).
"""

from django.http import HttpRequest, HttpResponse

from apps.core.exceptions import ValidationFailed
from apps.core.plainapi import plain_get
from apps.core.views import parse_int
from apps.prompts import runtime
from apps.telemetry.recording import bind_prompt

DEFAULT_LABEL = "production"


@plain_get
def prompt_fetch(request: HttpRequest, user: object, squad: str, slug: str) -> HttpResponse:
    label = request.GET.get("label")
    raw_version = request.GET.get("version")
    version = parse_int(raw_version, field="version", label="version")
    if raw_version is not None and version is None:  # "?version=" as ninja has it
        raise ValidationFailed("version must be a whole number (got '').", field="version")
    if label is None and version is None:
        label = DEFAULT_LABEL
    bind_prompt(slug, label=label, version=version)
    fetched = runtime.fetch(
        user=user, squad_slug=squad, template_slug=slug, label=label, version=version
    )
    if runtime.etag_matches(request.headers.get("If-None-Match"), fetched.etag):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(fetched.body, content_type="application/json")
    response["ETag"] = fetched.etag
    response["Cache-Control"] = "private, no-cache"
    return response
