"""Webhook signing secrets, encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA256).

Keys come from `STUDIO_WEBHOOK_SECRET_KEYS`, a comma-separated list of Fernet keys
(`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`):
the first encrypts, every one decrypts. Rotate by putting a new key first, running
`manage.py webhook_secrets_rotate` (re-encrypts every stored secret with it), then
dropping the old key. Development derives one key from SECRET_KEY; production refuses
to start without the setting. A database dump alone therefore holds no usable secret.
"""

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@lru_cache(maxsize=4)
def _fernet(raw: str, secret_key: str) -> MultiFernet:
    if not raw.strip():
        derived = hashlib.sha256(b"studio-webhook-secrets:" + secret_key.encode()).digest()
        return MultiFernet([Fernet(base64.urlsafe_b64encode(derived))])
    keys = []
    for i, item in enumerate(raw.split(",")):
        try:
            keys.append(Fernet(item.strip().encode()))
        except ValueError:
            raise ImproperlyConfigured(
                f"STUDIO_WEBHOOK_SECRET_KEYS entry {i + 1} is not a Fernet key (32 url-safe "
                "base64-encoded bytes, e.g. from Fernet.generate_key())."
            ) from None
    return MultiFernet(keys)


def fernet() -> MultiFernet:
    return _fernet(settings.STUDIO_WEBHOOK_SECRET_KEYS, settings.SECRET_KEY)


def encrypt(secret: str) -> str:
    return fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    """The secret; ImproperlyConfigured when no configured key opens it (a key was
    dropped before `webhook_secrets_rotate` ran)."""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "A webhook secret cannot be decrypted with any key in STUDIO_WEBHOOK_SECRET_KEYS; "
            "put back the key it was encrypted with."
        ) from None


def rotate(token: str) -> str:
    """The same secret encrypted with the first key."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "A webhook secret cannot be decrypted with any key in STUDIO_WEBHOOK_SECRET_KEYS."
        ) from None
