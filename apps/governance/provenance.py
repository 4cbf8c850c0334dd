"""Signed provenance manifests: HMAC-SHA256 over the canonical JSON of the manifest.

Keys come from `STUDIO_PROVENANCE_KEYS` ("id:base64secret,..."): the first signs, every
listed key verifies, so rotating means putting a new key first and keeping the old ones.
Without the setting (development, tests) one key "dev" is derived from SECRET_KEY;
production settings refuse to start without it.
"""

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from apps.core.keys import parse_keyring

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Signed:
    manifest: dict[str, Any]
    signature: str
    key_id: str


def signing_keys() -> list[tuple[str, bytes]]:
    raw = settings.STUDIO_PROVENANCE_KEYS.strip()
    if not raw:
        derived = hashlib.sha256(b"studio-provenance:" + settings.SECRET_KEY.encode()).digest()
        return [("dev", derived)]
    return parse_keyring(raw, setting="STUDIO_PROVENANCE_KEYS", min_bytes=16)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(key: bytes, manifest: dict[str, Any]) -> str:
    return hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()


def sign(manifest: dict[str, Any]) -> Signed:
    key_id, key = signing_keys()[0]
    return Signed(manifest=manifest, signature=_mac(key, manifest), key_id=key_id)


@dataclass(frozen=True)
class Verdict:
    valid: bool
    reasons: list[str]


def verify(*, manifest: dict[str, Any], signature: str, key_id: str, output: str | None) -> Verdict:
    """Valid when the key id is known, the signature matches the manifest and, when an
    output is given, its sha256 is the manifest's output_sha256."""
    reasons = []
    key = dict(signing_keys()).get(key_id)
    if key is None:
        reasons.append(f"Unknown key id '{key_id}'.")
    elif not hmac.compare_digest(_mac(key, manifest), signature or ""):
        reasons.append("The signature does not match the manifest (manifest or signature altered).")
    if output is not None and sha256_text(output) != manifest.get("output_sha256"):
        reasons.append("The output's sha256 differs from the manifest's output_sha256.")
    return Verdict(valid=not reasons, reasons=reasons)


def manifest_build(
    *,
    squad_id: int,
    prompt: dict[str, Any],
    target: dict[str, Any],
    adapter: str | None,
    parameters: dict[str, Any],
    variables: Any,
    input_sha256: str,
    output_text: str,
    status: str,
    policy_version: int | None,
    created_at: str,
) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "squad": squad_id,
        "prompt": prompt,
        "target": target,
        "adapter": adapter,
        "parameters": parameters,
        "variables_sha256": hashlib.sha256(canonical({"v": variables})).hexdigest(),
        "input_sha256": input_sha256,
        "output_sha256": sha256_text(output_text),
        "status": status,
        "policy_version": policy_version,
        "created_at": created_at,
    }
