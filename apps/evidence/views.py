from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from apps.evidence import selectors, services
from apps.evidence.api import zip_response


@login_required
@require_GET
def evidence_download(request: HttpRequest, squad: str, slug: str, number: int) -> HttpResponse:
    version = selectors.evidence_version_get_for_user(
        user=request.user, squad_slug=squad, slug=slug, number=number
    )
    filename, content = services.evidence_pack_build(
        actor=request.user, version=version, request=request
    )
    return zip_response(filename, content)


@login_required
@require_GET
def evidence_page(request: HttpRequest, squad: str, slug: str, number: int) -> HttpResponse:
    """The pack's printable page, inline (the browser's Print makes the PDF)."""
    version = selectors.evidence_version_get_for_user(
        user=request.user, squad_slug=squad, slug=slug, number=number
    )
    page = services.evidence_page_render(actor=request.user, version=version, request=request)
    response = HttpResponse(page.html)
    response["Cache-Control"] = "no-store"
    response["X-Evidence-SHA256"] = page.sha256
    # The page is byte for byte the zip's evidence.html (same sha256), so it cannot carry
    # a per-request nonce for its inline CSS: it runs no script at all instead.
    response["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return response
