"""Signed checkpoints of the audit chain's head, like a transparency log's signed tree head.

A checkpoint says "the event with this sequence had this hash", signed with an Ed25519 key
the database does not hold. Copies leave the database at once (a JSON log line and an
append-only file), so someone who can rewrite the table, recompute every later hash or cut
the tail still cannot make a checkpoint taken before agree with the result: `audit_verify
--checkpoints` finds the difference.

Keys: `STUDIO_AUDIT_CHECKPOINT_KEYS` ("id:<base64 of a 32-byte Ed25519 private key>", the
first signs, all verify; or `STUDIO_AUDIT_CHECKPOINT_KEYS_FILE`), plus
`STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS` ("id:<base64 of a 32-byte public key>") for retired
keys whose private half is gone and for verifiers that must not sign. Without keys
(development, tests) one key "dev" is derived from SECRET_KEY; production refuses to start.
"""

import base64
import hashlib
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from apps.core.keys import parse_keyring

TYPE = "studio.audit.checkpoint/v1"
FILE_NAME = "checkpoints.jsonl"
LOG_EVENT = "audit.checkpoint"
MAX_SOURCE_BYTES = 256 * 1024 * 1024

logger = structlog.get_logger("studio.audit")


class CheckpointRefused(Exception):
    """A checkpoint that does not verify: unknown key id, bad signature or malformed."""


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    hash: str
    signed_at: str
    reason: str
    key_id: str
    signature: str = ""
    type: str = TYPE

    def message(self) -> bytes:
        """The signed bytes: every field but the signature, as canonical JSON."""
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- keys --------------------------------------------------------------------------------


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def signing_keys() -> list[tuple[str, Ed25519PrivateKey]]:
    raw = settings.STUDIO_AUDIT_CHECKPOINT_KEYS.strip()
    if not raw:
        seed = hashlib.sha256(b"studio-audit-checkpoint:" + settings.SECRET_KEY.encode()).digest()
        return [("dev", Ed25519PrivateKey.from_private_bytes(seed))]
    entries = parse_keyring(raw, setting="STUDIO_AUDIT_CHECKPOINT_KEYS", min_bytes=32, exact=True)
    return [(key_id, Ed25519PrivateKey.from_private_bytes(seed)) for key_id, seed in entries]


def verifying_keys() -> dict[str, Ed25519PublicKey]:
    keys = {key_id: private.public_key() for key_id, private in signing_keys()}
    retired = parse_keyring(
        settings.STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS,
        setting="STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS",
        min_bytes=32,
        exact=True,
    )
    for key_id, raw in retired:
        if key_id in keys and public_bytes(keys[key_id]) != raw:
            raise ImproperlyConfigured(
                f"STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS: key '{key_id}' differs from the public "
                "half of the signing key with that id."
            )
        keys[key_id] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


def public_key_entry(key_id: str, key: Ed25519PublicKey) -> str:
    """ "id:<base64 public key>", as STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS lists it."""
    return f"{key_id}:{base64.b64encode(public_bytes(key)).decode()}"


def new_key_entry(key_id: str) -> tuple[str, str]:
    """A fresh ("id:<private base64>", "id:<public base64>") pair for the settings."""
    private = Ed25519PrivateKey.generate()
    seed = base64.b64encode(private.private_bytes_raw()).decode()
    return f"{key_id}:{seed}", public_key_entry(key_id, private.public_key())


# --- signing and checking ------------------------------------------------------------------


def sign(*, sequence: int, head_hash: str, reason: str) -> Checkpoint:
    key_id, key = signing_keys()[0]
    unsigned = Checkpoint(
        sequence=sequence,
        hash=head_hash,
        signed_at=timezone.now().isoformat(timespec="microseconds"),
        reason=reason,
        key_id=key_id,
    )
    signature = base64.b64encode(key.sign(unsigned.message())).decode()
    return Checkpoint(**{**unsigned.as_dict(), "signature": signature})


def sign_bytes(message: bytes) -> tuple[str, str]:
    """(key id, base64 signature) of other statements the chain must carry signed."""
    key_id, key = signing_keys()[0]
    return key_id, base64.b64encode(key.sign(message)).decode()


def verify_bytes(message: bytes, *, key_id: str, signature: str) -> str | None:
    """None when valid, else why not."""
    key = verifying_keys().get(key_id)
    if key is None:
        return f"unknown key id '{key_id}'"
    try:
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return "bad signature"
    return None


def check(item: dict[str, Any], *, where: str) -> Checkpoint:
    """The checkpoint in `item` once its signature verifies; CheckpointRefused otherwise."""
    try:
        checkpoint = Checkpoint(**item)
        valid_shape = (
            isinstance(checkpoint.sequence, int)
            and not isinstance(checkpoint.sequence, bool)
            and checkpoint.sequence >= 0
            and all(
                isinstance(getattr(checkpoint, f), str)
                for f in ("hash", "signed_at", "reason", "key_id", "signature")
            )
        )
    except TypeError:
        valid_shape = False
    if not valid_shape:
        raise CheckpointRefused(f"checkpoint at {where} is malformed")
    problem = verify_bytes(
        checkpoint.message(), key_id=checkpoint.key_id, signature=checkpoint.signature
    )
    if problem is not None:
        raise CheckpointRefused(f"checkpoint at {where} refused: {problem}")
    return checkpoint


# --- publishing ----------------------------------------------------------------------------


def checkpoint_file() -> Path | None:
    directory = settings.STUDIO_AUDIT_CHECKPOINT_DIR
    return Path(directory) / FILE_NAME if directory else None


def publish(checkpoint: Checkpoint) -> None:
    """Out of the database: a JSON log line, and a line appended to the checkpoint file
    (put its directory on an append-only or write-once mount)."""
    logger.info(LOG_EVENT, checkpoint=checkpoint.as_dict())
    path = checkpoint_file()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(checkpoint.as_dict(), sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading -------------------------------------------------------------------------------


def _read(source: str) -> str:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=60) as response:
            return response.read(MAX_SOURCE_BYTES).decode()
    return Path(source).read_text()


def load(source: str) -> Iterator[Checkpoint]:
    """Every checkpoint in a file or at a URL: lines of the checkpoint file, or JSON log
    lines (those whose event is audit.checkpoint; other lines are skipped). A checkpoint
    that does not verify raises CheckpointRefused."""
    try:
        text = _read(source)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointRefused(f"cannot read checkpoints from {source}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if not isinstance(item, dict):
            continue
        if item.get("event") == LOG_EVENT and isinstance(item.get("checkpoint"), dict):
            item = item["checkpoint"]
        if item.get("type") != TYPE:
            continue
        yield check(item, where=f"{source} line {number}")
