"""Content-Security-Policy on every response.

HTML pages get a strict policy: scripts, styles, images, fonts and connections only from
Studio's own origin (static files are served by Studio: htmx and every script are
vendored), no plugins, no framing, no <base> rewrites, forms posting only to Studio.
Inline script and <style> run only with the per-request nonce (`{{ csp_nonce }}` in
templates, from the `nonce` context processor); inline event handlers (onclick=…) and
style attributes never run — behaviour lives in static/js, looks in static/css. Anything
else (JSON, files) gets `default-src 'none'`: nothing in it may run or load at all. A
view that needs another policy sets the header itself (the evidence page).
"""

import secrets
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject

HEADER = "Content-Security-Policy"
NON_HTML_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


ADMIN_PREFIX = "/admin/"


def html_policy(nonce: str, *, admin: bool = False) -> str:
    # Django's admin (and guardian's pages in it) carry a few inline <style> blocks; on
    # those staff-only pages inline styles are allowed, scripts never.
    styles = "style-src 'self' 'unsafe-inline'" if admin else f"style-src 'self' 'nonce-{nonce}'"
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' 'nonce-{nonce}'",
            styles,
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def nonce(request: HttpRequest) -> dict[str, object]:
    """Template context processor: `csp_nonce` for the rare inline <script>/<style>."""
    return {"csp_nonce": getattr(request, "csp_nonce", "")}


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.csp_nonce = SimpleLazyObject(lambda: secrets.token_urlsafe(18))
        response = self.get_response(request)
        if HEADER not in response:
            content_type = response.get("Content-Type", "")
            if content_type.startswith("text/html"):
                response[HEADER] = html_policy(
                    str(request.csp_nonce), admin=request.path_info.startswith(ADMIN_PREFIX)
                )
            else:
                response[HEADER] = NON_HTML_POLICY
        return response
