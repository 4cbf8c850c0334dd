from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import (
    SECRET_KEY,
    STORAGES,
    STUDIO_AUDIT_CHECKPOINT_KEYS,
    STUDIO_METRICS_TOKEN,
    STUDIO_PROVENANCE_KEYS,
    STUDIO_WEBHOOK_SECRET_KEYS,
    env,
)

DEBUG = False
if (
    not SECRET_KEY
    or SECRET_KEY.startswith("insecure-")
    or len(set(SECRET_KEY)) < 5
    or len(SECRET_KEY) < 50
):
    raise ImproperlyConfigured(
        "SECRET_KEY must be set to a random value of at least 50 characters in production."
    )

if not STUDIO_PROVENANCE_KEYS.strip():
    raise ImproperlyConfigured(
        "STUDIO_PROVENANCE_KEYS must be set in production, e.g. 'k1:<base64 of 32 random bytes>'."
    )

if not STUDIO_AUDIT_CHECKPOINT_KEYS.strip():
    raise ImproperlyConfigured(
        "STUDIO_AUDIT_CHECKPOINT_KEYS (or STUDIO_AUDIT_CHECKPOINT_KEYS_FILE) must be set in "
        "production: 'k1:<base64 of a 32-byte Ed25519 private key>' "
        "(manage.py audit_checkpoint --new-key k1 prints one)."
    )

if not STUDIO_WEBHOOK_SECRET_KEYS.strip():
    raise ImproperlyConfigured(
        "STUDIO_WEBHOOK_SECRET_KEYS must be set in production: one or more Fernet keys, "
        "e.g. from `python -c 'from cryptography.fernet import Fernet; "
        "print(Fernet.generate_key().decode())'`."
    )

if STUDIO_METRICS_TOKEN and len(STUDIO_METRICS_TOKEN) < 32:
    raise ImproperlyConfigured(
        "STUDIO_METRICS_TOKEN must be at least 32 characters (or empty: allow-list only)."
    )

# Behind a reverse proxy on the same host every request arrives from 127.0.0.1, so a
# loopback allow-list would open /metrics to the internet: in production only addresses
# listed explicitly (or the token) may scrape.
STUDIO_METRICS_ALLOW = env.list("STUDIO_METRICS_ALLOW", default=[])

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# Prometheus and load balancers call the nodes directly over plain HTTP on the inside.
SECURE_REDIRECT_EXEMPT = [r"^metrics$", r"^healthz$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True

# Run `manage.py collectstatic` at deploy time; hashed names allow far-future caching.
STORAGES["staticfiles"] = {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}
WHITENOISE_USE_FINDERS = False

# Webhooks may not reach private, loopback or link-local addresses unless
# STUDIO_WEBHOOK_ALLOWED_HOSTS names them; the API document needs a signed-in caller.
STUDIO_WEBHOOK_BLOCK_PRIVATE = env.bool("STUDIO_WEBHOOK_BLOCK_PRIVATE", default=True)
STUDIO_API_DOCS_PUBLIC = env.bool("STUDIO_API_DOCS_PUBLIC", default=False)
