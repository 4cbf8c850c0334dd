"""The receiver example printed in the README, checked against a real delivery: it must
accept what Studio sends and refuse a tampered body and a stale timestamp."""

import base64
import hashlib
import hmac
import json
import time

import pytest


# --- README example (keep in sync) ----------------------------------------------------------
def verify_studio_webhook(secret: str, headers: dict, body: bytes, tolerance: int = 300) -> dict:
    """headers: the request's headers with lower-case names; body: the raw bytes."""
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        raise ValueError("stale or future timestamp")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if not any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split()):
        raise ValueError("bad signature")
    return json.loads(body)  # {"type": ..., "timestamp": ..., "data": {...}}


# ----------------------------------------------------------------------------------------------


def test_readme_receiver_accepts_a_real_delivery_and_refuses_forgeries(
    make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    from apps.squads.models import Squad
    from apps.webhooks import delivery as dl
    from apps.webhooks import events
    from apps.webhooks.models import WebhookDelivery

    server = receiver(200)
    _, secret = make_webhook(url=server.url, events=["label.moved"])
    with django_capture_on_commit_callbacks(execute=True):
        events.emit(
            squad_id=Squad.objects.get(slug="acme").pk,
            event="label.moved",
            data={"label": "production", "to_version": 3},
        )
    dl.delivery_attempt(delivery_id=WebhookDelivery.objects.get().pk)
    (got,) = server.requests
    event = verify_studio_webhook(secret, got.headers, got.body)
    assert event["type"] == "label.moved" and event["data"]["to_version"] == 3
    with pytest.raises(ValueError, match="bad signature"):
        verify_studio_webhook(secret, got.headers, got.body.replace(b"3", b"4"))
    with pytest.raises(ValueError, match="bad signature"):
        verify_studio_webhook(
            "whsec_" + base64.b64encode(b"x" * 32).decode(), got.headers, got.body
        )
    stale = {**got.headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(ValueError, match="stale"):
        verify_studio_webhook(secret, stale, got.body)
