from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from apps.core.exceptions import ApplicationError, NotFound


class ApplicationErrorMiddleware:
    """HTML views: an ApplicationError that a view did not handle inline becomes a
    page with the message and the right status, never a 500. (The API has its
    own JSON handlers.)"""

    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

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
