"""Keyrings in settings: "id:base64,id:base64" (commas or newlines, so a mounted secret
file works too). The first key signs, every key verifies; rotating puts a new key first
and keeps the old ones. Shared by provenance signatures and audit checkpoints."""

import base64
import binascii
import re

from django.core.exceptions import ImproperlyConfigured


def parse_keyring(
    raw: str, *, setting: str, min_bytes: int, exact: bool = False
) -> list[tuple[str, bytes]]:
    """[(key id, key bytes)] in the order given; ImproperlyConfigured names the bad entry."""
    size = f"{min_bytes} bytes" if exact else f"at least {min_bytes} bytes"
    keys: list[tuple[str, bytes]] = []
    for i, item in enumerate(i for i in re.split(r"[,\n]", raw) if i.strip()):
        key_id, sep, secret = item.strip().partition(":")
        try:
            value = base64.b64decode(secret.strip(), validate=True) if sep else b""
        except binascii.Error:
            value = b""
        fits = len(value) == min_bytes if exact else len(value) >= min_bytes
        if not key_id or not fits:
            raise ImproperlyConfigured(f"{setting} entry {i + 1} must be 'id:<base64 of {size}>'.")
        if key_id in dict(keys):
            raise ImproperlyConfigured(f"{setting} entry {i + 1} repeats the key id '{key_id}'.")
        keys.append((key_id, value))
    return keys
