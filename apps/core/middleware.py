import re

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import render

from apps.core.exceptions import ApplicationError, NotFound, ValidationFailed
from apps.core.validation import nul_path, parse_json


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


# A NUL escape in JSON text: "\u0000" after an even number of backslashes (so not the
# escaped text "\\u0000").
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)


def _carries_nul(value: str) -> bool:
    """A NUL character, or JSON text (a variables or schema field) holding one escaped."""
    if "\x00" in value:
        return True
    if not _JSON_NUL.search(value.encode()):
        return False
    try:
        return nul_path(parse_json(value, field=""), "") is not None
    except ValidationFailed:
        return False  # not JSON: the escape is plain text


def _nul_field(request: HttpRequest) -> str | None:
    if "\x00" in request.path:
        return "path"
    for name, values in request.GET.lists():
        if "\x00" in name or any(_carries_nul(v) for v in values):
            return name
    content_type = request.content_type or ""
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for name, values in request.POST.lists():
            if "\x00" in name or any(_carries_nul(v) for v in values):
                return name
        for name, upload in request.FILES.items():
            if "\x00" in (upload.name or ""):
                return name
        if content_type == "multipart/form-data":
            return None  # uploaded files may hold any bytes; their parsers check rows
    # The API reads every body as JSON whatever its Content-Type says (none, text/plain,
    # even a form type), so under /api/ the body is checked as JSON text too.
    if content_type.endswith("json") or request.path.startswith("/api/"):
        try:
            body = request.body
        except RequestDataTooBig:
            return None  # too large to read: the view refuses it in its own words
        if b"\x00" not in body and not _JSON_NUL.search(body):
            return None
        try:
            where = nul_path(parse_json(body, field="body"), "")
        except ValidationFailed:
            # not JSON (the parser says where), unless a raw NUL is in it
            return "body" if b"\x00" in body else None
        return None if where is None else where or "body"
    return None


class RejectNulMiddleware:
    """No text with a NUL character reaches a view: PostgreSQL's text and jsonb refuse
    it (a 500 at save time), and no field of Studio has a use for it. Query strings,
    form fields (and JSON text in them), upload names and JSON bodies (the `\\u0000`
    escape) are checked here, once for every API operation and page: 422 JSON naming
    the field under /api/, OpenAI's error shape (400) under the gateway's /v1/, a 400
    page elsewhere."""

    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        field = _nul_field(request)
        if field is None:
            return self.get_response(request)
        exc = ValidationFailed(
            f"{field} contains a NUL character (\\u0000), which Studio does not accept.",
            field=field,
        )
        if request.path.startswith("/api/"):
            return JsonResponse(exc.as_dict(), status=exc.status_code)
        if request.path.startswith("/v1/"):
            error = {
                "message": exc.message,
                "type": "invalid_request_error",
                "param": field,
                "code": "invalid_value",
            }
            return JsonResponse({"error": error}, status=400)
        return render(request, "error.html", {"message": exc.message, "status": 400}, status=400)
