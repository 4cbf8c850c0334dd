"""Settings of the test suite: the base settings plus a faster password hasher, the API
budgets lifted, and, under pytest-xdist, one set of resources per test process."""

import os
import re
from pathlib import Path


def _own_resources_per_test_process() -> None:
    """Under pytest-xdist (`make test` runs `-n 2`), each test process gets its own data
    folder (SQLite file, filesystem broker, file cache, logs) and its own Redis databases
    (the broker's and the cache's number n becomes n * workers + index), so one process's
    cache.clear() or Celery worker never touches the other's. Set in the environment
    before the base settings read it, so the Celery workers, servers and commands a test
    starts inherit the same resources. The converted default model is shared (a symlink:
    its conversion is atomic). Applied once per process tree."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker or os.environ.get("STUDIO_TEST_PROCESS") == worker:
        return
    import environ

    root = Path(__file__).resolve().parent.parent.parent
    environ.Env.read_env(root / ".env", overwrite=False)
    index = int(worker.removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    shared = Path(os.environ.get("STUDIO_DATA_DIR", str(root / "var"))).resolve()
    own = shared / f"xdist-{worker}"
    (shared / "models").mkdir(parents=True, exist_ok=True)
    own.mkdir(parents=True, exist_ok=True)
    if not (own / "models").exists():
        (own / "models").symlink_to(shared / "models", target_is_directory=True)
    os.environ["STUDIO_DATA_DIR"] = str(own)
    if "STUDIO_BROKER_DIR" in os.environ:
        os.environ["STUDIO_BROKER_DIR"] = str(Path(os.environ["STUDIO_BROKER_DIR"]) / worker)
    for name in ("CELERY_BROKER_URL", "CACHE_URL"):
        url = os.environ.get(name, "")
        found = re.fullmatch(r"(rediss?://[^/?#]*)/?(\d*)(.*)", url)
        if found:
            number = int(found[2] or 0) * count + index
            if number > 15:
                raise RuntimeError(
                    f"{name}={url}: with {count} test processes its Redis database "
                    f"becomes {number}; Redis has 16 (0-15): use a lower database number"
                )
            os.environ[name] = f"{found[1]}/{number}{found[3]}"
    os.environ["STUDIO_TEST_PROCESS"] = worker


_own_resources_per_test_process()

from .base import *  # noqa: E402, F403
from .base import DATA_DIR, DATABASES  # noqa: E402

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
