from django.http import HttpRequest, HttpResponse
from ninja import Router

from apps.evidence import selectors, services

router = Router(tags=["evidence"])


@router.get(
    "/squads/{squad}/prompts/{slug}/versions/{number}/evidence",
    response={200: None},
    url_name="evidence_pack",
    openapi_extra={
        "responses": {
            "200": {
                "description": "The evidence pack (zip), as an attachment",
                "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            }
        }
    },
)
def evidence_pack(request: HttpRequest, squad: str, slug: str, number: int) -> HttpResponse:
    """The version's compliance evidence pack: a zip of evidence.json, a printable
    evidence.html and manifest.json (sha256 of each file). Owners and compliance leads."""
    version = selectors.evidence_version_get_for_user(
        user=request.auth, squad_slug=squad, slug=slug, number=number
    )
    filename, content = services.evidence_pack_build(
        actor=request.auth, version=version, request=request
    )
    return zip_response(filename, content)


def zip_response(filename: str, content: bytes) -> HttpResponse:
    response = HttpResponse(content, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
