"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Sender: `webhook-id`, `webhook-timestamp` (unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with
the base64-decoded part of the `whsec_...` secret. Receiver: `verify`, which needs
nothing from Studio but this module (or any Standard Webhooks library).
"""

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Any

from apps.core.exceptions import ValidationFailed
from apps.core.validation import parse_json

PREFIX = "whsec_"
SECRET_BYTES = 32
VERSION = "v1"


class WebhookVerificationError(Exception):
    """The request did not come from the webhook's sender, or came too late."""


def secret_generate() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise WebhookVerificationError("The secret is not a whsec_ base64 secret.") from exc


def sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode()}"


def headers(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header a delivery carries."""
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret=secret, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: int = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a received webhook and return its parsed body.

    Raises WebhookVerificationError when a header is missing, the timestamp is more
    than `tolerance` seconds away from now (replays), no `v1` signature is present, or
    none of the `v1` signatures matches the body.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    header = lowered.get("webhook-signature")
    if not msg_id or not stamp or not header:
        raise WebhookVerificationError("Missing webhook-id, webhook-timestamp or signature.")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not a unix time.") from exc
    current = time.time() if now is None else now
    try:
        late = abs(current - timestamp)
    except OverflowError as exc:  # an integer no float can hold: not a time at all
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance.") from exc
    if late > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance.")
    expected = sign(secret=secret, msg_id=msg_id, timestamp=timestamp, body=body)
    # Several space-separated signatures may be sent (e.g. during a secret rotation).
    candidates = [s for s in header.split() if s.startswith(f"{VERSION},")]
    if not candidates:
        raise WebhookVerificationError("No v1 signature in webhook-signature.")
    if not any(hmac.compare_digest(expected, s) for s in candidates):
        raise WebhookVerificationError("No signature matches the body.")
    try:
        return parse_json(body, field="body")
    except ValidationFailed as exc:
        raise WebhookVerificationError(f"The body is {exc.message}") from exc
