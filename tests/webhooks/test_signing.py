"""Signatures from the receiver's point of view: what `verify` accepts and refuses."""

import base64
import hashlib
import hmac
import json
import time

import pytest

from apps.webhooks import signing
from apps.webhooks.signing import WebhookVerificationError, verify

BODY = json.dumps({"type": "version.created", "data": {"version": 2}}).encode()


def _signed(secret: str, body: bytes = BODY, *, at: int | None = None) -> dict[str, str]:
    return signing.headers(
        secret=secret, msg_id="msg_1", timestamp=at or int(time.time()), body=body
    )


def test_secret_shape() -> None:
    secret = signing.secret_generate()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != signing.secret_generate()


def test_signature_is_standard_webhooks_hmac() -> None:
    """Computed independently: HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed with the
    decoded secret, base64, prefixed v1."""
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    expected = base64.b64encode(
        hmac.new(b"k" * 32, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    ).decode()
    assert signing.sign(secret=secret, msg_id="msg_1", timestamp=1700000000, body=BODY) == (
        f"v1,{expected}"
    )


def test_good_signature_verifies_and_returns_body() -> None:
    secret = signing.secret_generate()
    assert verify(secret, _signed(secret), BODY) == json.loads(BODY)


def test_headers_are_case_insensitive() -> None:
    secret = signing.secret_generate()
    headers = {k.upper(): v for k, v in _signed(secret).items()}
    assert verify(secret, headers, BODY)["type"] == "version.created"


def test_tampered_body_is_refused() -> None:
    secret = signing.secret_generate()
    headers = _signed(secret)
    with pytest.raises(WebhookVerificationError, match="No signature matches"):
        verify(secret, headers, BODY.replace(b"2", b"3"))


def test_wrong_secret_is_refused() -> None:
    headers = _signed(signing.secret_generate())
    with pytest.raises(WebhookVerificationError, match="No signature matches"):
        verify(signing.secret_generate(), headers, BODY)


def test_old_timestamp_is_refused_even_with_a_valid_signature() -> None:
    secret = signing.secret_generate()
    headers = _signed(secret, at=int(time.time()) - 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, headers, BODY)
    assert verify(secret, headers, BODY, tolerance=600)


def test_future_timestamp_is_refused() -> None:
    secret = signing.secret_generate()
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, _signed(secret, at=int(time.time()) + 400), BODY)


def test_changed_id_or_timestamp_breaks_the_signature() -> None:
    secret = signing.secret_generate()
    now = int(time.time())
    headers = _signed(secret, at=now)
    with pytest.raises(WebhookVerificationError):
        verify(secret, {**headers, "webhook-id": "msg_2"}, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(secret, {**headers, "webhook-timestamp": str(now - 1)}, BODY)


def test_unknown_signature_version_is_refused() -> None:
    secret = signing.secret_generate()
    headers = _signed(secret)
    v2 = headers["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(WebhookVerificationError, match="No v1 signature"):
        verify(secret, {**headers, "webhook-signature": v2}, BODY)


def test_one_matching_signature_among_several_is_enough() -> None:
    """During a rotation a sender may send several signatures, space-separated."""
    secret = signing.secret_generate()
    headers = _signed(secret)
    other = _signed(signing.secret_generate())["webhook-signature"]
    both = f"{other} {headers['webhook-signature']}"
    assert verify(secret, {**headers, "webhook-signature": both}, BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(missing: str) -> None:
    secret = signing.secret_generate()
    headers = {k: v for k, v in _signed(secret).items() if k != missing}
    with pytest.raises(WebhookVerificationError, match="Missing"):
        verify(secret, headers, BODY)


def test_non_numeric_timestamp_is_refused() -> None:
    secret = signing.secret_generate()
    with pytest.raises(WebhookVerificationError, match="unix time"):
        verify(secret, {**_signed(secret), "webhook-timestamp": "yesterday"}, BODY)


def test_timestamp_beyond_float_range_is_refused_not_an_overflow() -> None:
    secret = signing.secret_generate()
    headers = {**_signed(secret), "webhook-timestamp": "1" + "0" * 400}
    with pytest.raises(WebhookVerificationError, match="webhook-timestamp"):
        verify(secret, headers, BODY)
