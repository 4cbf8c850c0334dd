"""The receiver example printed in the README, checked against a real delivery: it must
accept what Studio sends and refuse a tampered body and a stale timestamp."""

import base64
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_receiver():
    """The ```python block of README.md that defines verify_studio_webhook, executed as
    a receiver would paste it: the test cannot drift from what the README prints."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if "def verify_studio_webhook" in b]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["verify_studio_webhook"]


verify_studio_webhook = _readme_receiver()


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
    forged = {**got.headers, "webhook-timestamp": "9" * 400}
    with pytest.raises(ValueError, match="malformed timestamp"):
        verify_studio_webhook(secret, forged, got.body)
