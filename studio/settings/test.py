from .base import *  # noqa: F403
from .base import DATA_DIR, DATABASES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so a worker process started by a test sees it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}

# WhiteNoise indexes every static file each time a test client builds the middleware
# chain; live_server serves static files itself.
MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("whitenoise.")]  # noqa: F405

# No checkpoint file shared between test runs (tests that need one set a tmp_path).
STUDIO_AUDIT_CHECKPOINT_DIR = ""
# The suite makes thousands of API calls from one address in seconds: budgets far above
# that (tests/core/test_ratelimit.py proves the limits with the real defaults of base.py).
STUDIO_API_RATE_PER_TOKEN = "1000000/10"
STUDIO_API_RATE_PER_ADDRESS = "1000000/10"
