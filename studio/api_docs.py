"""Who may read the API's OpenAPI document and docs page.

`STUDIO_API_DOCS_PUBLIC` (on in development, off in studio.settings.production): when off,
only a signed-in session or a valid bearer token gets them — the document maps every
endpoint and parameter, which an anonymous visitor of a production server has no need
for. The browser's docs page fetches the document with the same session.
"""

from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.core.exceptions import AuthenticationFailed
from apps.squads.services import api_token_authenticate

View = Callable[..., HttpResponse]


def _signed_in(request: HttpRequest) -> bool:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and raw.strip():
        try:
            api_token_authenticate(raw=raw.strip())
        except AuthenticationFailed:
            return False
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated)


def docs_access(view: View) -> View:
    """NinjaAPI(docs_decorator=…): applied to the OpenAPI document and the docs page."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if settings.STUDIO_API_DOCS_PUBLIC or _signed_in(request):
            return view(request, *args, **kwargs)
        if request.path.endswith(".json"):
            response = JsonResponse(
                {"detail": "Sign in or send 'Authorization: Bearer <token>' to read the API."},
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="studio"'
            return response
        return redirect_to_login(request.get_full_path())

    return guarded
