"""The pack as files: evidence.json, a self-contained printable evidence.html, and
manifest.json with every other file's sha256 — zipped (zip opens everywhere, without
tools, for the compliance people who read it)."""

import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from typing import Any

from django.template.loader import render_to_string

JSON_NAME = "evidence.json"
HTML_NAME = "evidence.html"
MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = "studio.evidence.manifest"


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def render_json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def render_html(document: dict[str, Any]) -> str:
    """The printable page: inline CSS, no scripts, no external assets."""
    return render_to_string("evidence/pack.html", {"doc": document})


def manifest(files: dict[str, bytes], *, document: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "schema_version": document["schema_version"],
        "generated_at": document["generated_at"],
        "algorithm": "sha256",
        "files": [
            {"path": name, "sha256": sha256(content), "bytes": len(content)}
            for name, content in files.items()
        ],
    }


def build_zip(document: dict[str, Any], html: str, *, at: datetime) -> bytes:
    files = {JSON_NAME: render_json(document), HTML_NAME: html.encode()}
    files[MANIFEST_NAME] = render_json(manifest(files, document=document))
    stamp = at.astimezone(UTC).timetuple()[:6]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    return buffer.getvalue()
