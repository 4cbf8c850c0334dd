from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from apps.audit.services import audit_log
from apps.evidence import archive
from apps.evidence.collect import collect
from apps.prompts.models import PromptVersion
from apps.squads.access import require_squad_permission
from apps.squads.permissions import EXPORT_EVIDENCE

User = AbstractBaseUser


@dataclass(frozen=True)
class EvidencePage:
    html: str
    sha256: str


def _filename(version: PromptVersion, stamp: str) -> str:
    template = version.template
    return f"evidence-{template.squad.slug}-{template.slug}-v{version.number}-{stamp}.zip"


def evidence_pack_build(
    *, actor: User, version: PromptVersion, request: HttpRequest | None = None
) -> tuple[str, bytes]:
    """The version's evidence pack as (file name, zip bytes); the export is audited as
    `evidence.exported` with the archive's sha256.

    The pack is read outside a transaction (the chain walk can be long and must not hold
    SQLite's write lock); only the audit event is written in one."""
    squad = version.template.squad
    require_squad_permission(actor, squad, EXPORT_EVIDENCE)
    at = timezone.now()
    document = collect(version=version, actor=actor, at=at)
    content = archive.build_zip(document, archive.render_html(document), at=at)
    filename = _filename(version, at.strftime("%Y%m%dT%H%M%SZ"))
    with transaction.atomic():
        audit_log(
            actor=actor,
            action="evidence.exported",
            squad=squad,
            target=version,
            data={
                "template": version.template.slug,
                "number": version.number,
                "format": "zip",
                "filename": filename,
                "sha256": archive.sha256(content),
                "bytes": len(content),
                "chain": document["audit"]["verification"]["status"],
            },
            request=request,
        )
    return filename, content


def evidence_page_render(
    *, actor: User, version: PromptVersion, request: HttpRequest | None = None
) -> EvidencePage:
    """The printable page alone, for reading in the browser; audited as `evidence.viewed`
    with the page's sha256 (it shows everything the pack does)."""
    squad = version.template.squad
    require_squad_permission(actor, squad, EXPORT_EVIDENCE)
    document = collect(version=version, actor=actor, at=timezone.now())
    html = archive.render_html(document)
    digest = archive.sha256(html.encode())
    with transaction.atomic():
        audit_log(
            actor=actor,
            action="evidence.viewed",
            squad=squad,
            target=version,
            data={
                "template": version.template.slug,
                "number": version.number,
                "format": "html",
                "sha256": digest,
                "chain": document["audit"]["verification"]["status"],
            },
            request=request,
        )
    return EvidencePage(html=html, sha256=digest)
