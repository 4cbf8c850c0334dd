from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import render

from apps.core.exceptions import ApplicationError, NotFound


class ApplicationErrorMiddleware:
    """HTML views: an ApplicationError that a view did not handle inline becomes a
    page with the message and the right status, never a 500. (The API has its
    own JSON handlers.) A method the page does not take (Django's bare 405) becomes a
    page in the layout saying what the address is for."""

    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if isinstance(response, HttpResponseNotAllowed) and not request.path.startswith("/api/"):
            return _method_not_allowed(request, response)
        return response

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, NotFound):
            raise Http404(exc.message)
        if isinstance(exc, ApplicationError):
            return render(
                request,
                "error.html",
                {"message": exc.message, "status": exc.status_code},
                status=exc.status_code,
            )
        return None


def _method_not_allowed(request: HttpRequest, bare: HttpResponseNotAllowed) -> HttpResponse:
    allowed = [m.strip() for m in bare.get("Allow", "").split(",") if m.strip()]
    if allowed == ["POST"]:
        message = (
            "This address receives a form; it is not a page to open. "
            "Use the form on the page that links here."
        )
    else:
        message = (
            f"This address does not take {request.method} requests; it takes {', '.join(allowed)}."
        )
    response = render(
        request,
        "error.html",
        {"message": message, "status": 405, "title": "Not a page"},
        status=405,
    )
    response["Allow"] = bare["Allow"]
    return response
