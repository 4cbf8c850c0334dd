"""Hot API reads as plain Django views.

django-ninja's per-request machinery (operation lookup, parameter models, response
validation) costs more than a warm read does. The few GET operations that production
clients call on every request (the runtime prompt fetch, the squad detail) are
therefore answered by a plain view placed before the ninja mount in `studio/urls.py`,
with the same authentication class (`studio.api.BearerOrSession`), the same errors
(`ApplicationError.as_dict()` and its status, `WWW-Authenticate` on a 401) and the same
body. The ninja operation stays: it documents the endpoint in OpenAPI and serves every
other method on the path, to which the plain view hands the request unchanged.

Like every ninja operation the view is exempt from Django's CSRF middleware: GET and
HEAD are safe, and the methods it hands over get the API's own rule.
"""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLResolver
from django.urls.resolvers import RoutePattern
from django.views.decorators.csrf import csrf_exempt

from apps.core.exceptions import ApplicationError, AuthenticationFailed

Handler = Callable[..., HttpResponse]
_ninja: URLResolver | None = None
_auth: Callable[[HttpRequest], object] | None = None


def delegate_to_ninja(request: HttpRequest) -> HttpResponse:
    """Answer `request` through the ninja API exactly as if the plain view did not exist."""
    global _ninja
    if _ninja is None:
        from studio.api import api

        patterns, app_name, namespace = api.urls
        _ninja = URLResolver(
            RoutePattern("api/v1/"), patterns, app_name=app_name, namespace=namespace
        )
    match = _ninja.resolve(request.path_info.lstrip("/"))
    return match.func(request, *match.args, **match.kwargs)


def authenticate(request: HttpRequest) -> Any:
    """The caller, as the ninja API's auth class finds it (AuthenticationFailed if none)."""
    global _auth
    if _auth is None:  # stateless, like the instance the ninja API holds
        from studio.api import BearerOrSession

        _auth = BearerOrSession()
    return _auth(request)


def error_response(exc: ApplicationError) -> JsonResponse:
    response = JsonResponse(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, AuthenticationFailed):
        response["WWW-Authenticate"] = 'Bearer realm="studio"'
    return response


def plain_get(
    handler: Handler | None = None, *, auth: Callable[[HttpRequest], Any] = authenticate
) -> Any:
    """A URL view answering GET and HEAD with `handler(request, caller, **kwargs)` after
    `auth` (the API's own by default; the prompt fetch also takes service keys);
    ApplicationError becomes the API's JSON error; other methods go to the ninja
    operation on the same path. Use as `@plain_get` or `@plain_get(auth=...)`."""

    def wrap(handler: Handler) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @wraps(handler)
        def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            if request.method not in ("GET", "HEAD"):
                return delegate_to_ninja(request)
            try:
                return handler(request, auth(request), **kwargs)
            except ApplicationError as exc:
                return error_response(exc)

        return view

    return wrap if handler is None else wrap(handler)
