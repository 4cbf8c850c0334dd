"""One settings module driven by environment variables.

Embedded defaults need no server: SQLite, kombu's filesystem broker and a
local-memory cache, all under STUDIO_DATA_DIR (default ./var).
"""

from datetime import timedelta
from pathlib import Path

import environ

from apps.telemetry.logconfig import configure as log_configure

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env.str("STUDIO_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env.str("SECRET_KEY", default="insecure-dev-key-change-me-in-production-0123456789")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    # Serves the API docs page's Swagger UI from its own static files (no CDN).
    "ninja",
    "django_htmx",
    "template_partials",
    "guardian",
    "apps.core",
    "apps.squads",
    "apps.audit",
    "apps.prompts",
    "apps.generation",
    "apps.reviews",
    "apps.finetune",
    "apps.governance",
    "apps.evidence",
    "apps.telemetry",
    "apps.webhooks",
    "apps.evals",
    "apps.feedback",
    "apps.gateway",
    "apps.basemodels",
]

MIDDLEWARE = [
    # First, so its request id, log bindings and latency cover everything below.
    "apps.telemetry.middleware.RequestTelemetryMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "apps.core.csp.ContentSecurityPolicyMiddleware",
    # Before sessions and the API: a caller over its budget costs no database query.
    "apps.core.ratelimit.ApiRateLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Text with NUL characters never reaches a view (query, form, JSON body): 422 / 400.
    "apps.core.middleware.RejectNulMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "apps.core.middleware.ApplicationErrorMiddleware",
    # Last: turns a sign-in refused by a lockout into the lockout page (django-axes).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "studio.urls"
WSGI_APPLICATION = "studio.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.squads.context_processors.navigation",
                "apps.core.csp.nonce",
            ],
        },
    }
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'studio.sqlite3'}")
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
if env.bool("STUDIO_ASGI", default=False) and "postgresql" in DATABASES["default"]["ENGINE"]:
    # Under ASGI every request runs in a new thread, so a connection kept per thread
    # (CONN_MAX_AGE) would be a new connection per request, left open until collected.
    # A pool per process instead: a request borrows a connection and gives it back.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Enough for the page threads and the streams in their synchronous phase (each
    # STUDIO_ASGI_SYNC_CONCURRENCY) plus the streams writing their records.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN", default=2),
        "max_size": env.int("DATABASE_POOL_MAX", default=40),
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=30.0),
    }
# Under studio.asgi: the threads of each worker process that run pages, the API and
# gateway calls that do not stream, and how many gateway streams may be in their
# synchronous part (up to the first byte) at once; a stream past that point is not
# counted. 0 leaves the streams unbounded (pages keep 16 threads).
STUDIO_ASGI_SYNC_CONCURRENCY = env.int("STUDIO_ASGI_SYNC_CONCURRENCY", default=16)
# Environment variables a remote model target may name as its token (`token_env`):
# comma-separated patterns. Only these: any other name would let a squad owner send the
# server's own secrets to a URL of their choosing.
STUDIO_TARGET_TOKEN_ENVS = env.str("STUDIO_TARGET_TOKEN_ENVS", default="STUDIO_TARGET_TOKEN_*")
# Under studio.asgi: the largest request body the server reads (uploads are up to 50 MiB
# of file plus the form around it); past it, 413 before any view runs.
STUDIO_MAX_REQUEST_BODY = env.int("STUDIO_MAX_REQUEST_BODY", default=64 * 1024 * 1024)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server and the worker read while the other writes;
    # IMMEDIATE transactions take the write lock up front instead of failing
    # with "database is locked" halfway through.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

# The embedded default is a file cache: shared by the web workers and the Celery
# worker on one machine, so a revoked token or a moved label is seen by all of them.
CACHES = {"default": env.cache_url("CACHE_URL", default=f"filecache://{DATA_DIR / 'cache'}")}
if CACHES["default"]["BACKEND"] in (
    "django_redis.cache.RedisCache",
    "django.core.cache.backends.redis.RedisCache",
):
    # Django's own Redis backend (no django-redis), reusing its client: studio/cache.py.
    CACHES["default"]["BACKEND"] = "studio.cache.StudioRedisCache"
    CACHES["default"].pop("OPTIONS", None)
elif CACHES["default"]["BACKEND"] == "django.core.cache.backends.filebased.FileBasedCache":
    # Counters (sign-in failures, API budgets) must be atomic across the web workers.
    CACHES["default"]["BACKEND"] = "studio.cache.StudioFileBasedCache"

AUTHENTICATION_BACKENDS = [
    # First: refuses every sign-in of a locked-out account or address (django-axes).
    "apps.squads.signin.SigninLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row
GUARDIAN_RAISE_403 = False
GUARDIAN_MONKEY_PATCH_USER = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "squads:dashboard"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.str("STATIC_ROOT", default=str(DATA_DIR / "staticfiles"))
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve from app dirs without collectstatic in development
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the login form and htmx read the token from the page
X_FRAME_OPTIONS = "DENY"

# --- Celery -----------------------------------------------------------------
# Job state lives in our own models; no result backend.
BROKER_DIR = Path(env.str("STUDIO_BROKER_DIR", default=str(DATA_DIR / "broker"))).resolve()
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
GPU_TASK_TIME_LIMIT = env.int("STUDIO_GPU_TASK_TIME_LIMIT", default=6 * 3600)
DEFAULT_TASK_TIME_LIMIT = env.int("STUDIO_DEFAULT_TASK_TIME_LIMIT", default=15 * 60)
# Every task that states no limit of its own (default-queue tasks); GPU tasks state theirs.
CELERY_TASK_TIME_LIMIT = DEFAULT_TASK_TIME_LIMIT
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {
    # Must exceed the longest task: an unacknowledged message is redelivered
    # after this long, and a late-acked GPU job holds its message until done.
    "visibility_timeout": GPU_TASK_TIME_LIMIT + 3600,
}
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            "data_folder_in": str(BROKER_DIR / "queue"),
            "data_folder_out": str(BROKER_DIR / "queue"),
            "processed_folder": str(BROKER_DIR / "processed"),
            # Broadcast (pidbox) exchanges; kombu's default is ./control in the cwd.
            "control_folder": str(BROKER_DIR / "control"),
            "store_processed": False,
        }
    )
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)

# --- Long jobs (apps/core/jobs.py, apps/core/fairshare.py) ---------------------------
# A claim whose heartbeat is older than this is taken for a lost worker and requeued
# (heartbeats come every quarter of it, from their own thread); after max attempts
# lost workers the job fails with the reason.
STUDIO_JOB_STALE_SECONDS = env.float("STUDIO_JOB_STALE_SECONDS", default=120.0)
STUDIO_JOB_MAX_ATTEMPTS = env.int("STUDIO_JOB_MAX_ATTEMPTS", default=3)
# Fair share of GPU workers: GPU time is counted over this window; a squad without its
# own limit (apps.core.models.GpuShare, set by staff) runs at most this many GPU jobs at
# once (0: no limit).
STUDIO_FAIR_SHARE_WINDOW_HOURS = env.float("STUDIO_FAIR_SHARE_WINDOW_HOURS", default=24.0)
STUDIO_GPU_MAX_RUNNING_PER_SQUAD = env.int("STUDIO_GPU_MAX_RUNNING_PER_SQUAD", default=0)

# --- Studio -----------------------------------------------------------------
# Who may create squads: "any" signed-in user (who becomes its owner) or "staff".
STUDIO_SQUAD_CREATORS = env.str("STUDIO_SQUAD_CREATORS", default="any")
STUDIO_TOKEN_LAST_USED_RESOLUTION = 60  # seconds between last-used writes per token
# Per-process memo of tokens, permission sets and prompt bodies (apps/core/memo.py):
# how long a change made through one web process may take to reach the others.
STUDIO_HOT_MEMO_SECONDS = env.float("STUDIO_HOT_MEMO_SECONDS", default=1.0)
# How long a reviewer holds an output review item claimed by "next item" before it is
# offered to someone else.
# Provenance signing keys, "id:base64secret,id:base64secret": the first signs, all verify
# (rotation: put the new key first, keep the old ones). Development derives key "dev" from
# SECRET_KEY; production refuses to start without explicit keys.
STUDIO_PROVENANCE_KEYS = env.str("STUDIO_PROVENANCE_KEYS", default="")
# Signed checkpoints of the audit chain's head (apps/audit/checkpoints.py): Ed25519 keys
# "id:<base64 32-byte private key>" (first signs, all verify), from the variable or a file;
# public halves of retired keys; where the checkpoint file goes ("" = log line only); how
# often the workers' sweeper publishes one (0 = only on export and on demand).
STUDIO_AUDIT_CHECKPOINT_KEYS = env.str("STUDIO_AUDIT_CHECKPOINT_KEYS", default="")
_checkpoint_keys_file = env.str("STUDIO_AUDIT_CHECKPOINT_KEYS_FILE", default="")
if _checkpoint_keys_file and not STUDIO_AUDIT_CHECKPOINT_KEYS.strip():
    STUDIO_AUDIT_CHECKPOINT_KEYS = Path(_checkpoint_keys_file).read_text()
STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS = env.str("STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS", default="")
STUDIO_AUDIT_CHECKPOINT_DIR = env.str(
    "STUDIO_AUDIT_CHECKPOINT_DIR", default=str(DATA_DIR / "audit-checkpoints")
)
STUDIO_AUDIT_CHECKPOINT_SECONDS = env.int("STUDIO_AUDIT_CHECKPOINT_SECONDS", default=3600)
STUDIO_REVIEW_CLAIM_SECONDS = env.int("STUDIO_REVIEW_CLAIM_SECONDS", default=30 * 60)
# Webhook deliveries: seconds before a receiver counts as not answering, and attempts
# before a delivery is failed (backoff 30 s, 2 min, 10 min, 1 h, 6 h; capped at 10).
STUDIO_WEBHOOK_TIMEOUT = env.float("STUDIO_WEBHOOK_TIMEOUT", default=10.0)
STUDIO_WEBHOOK_MAX_ATTEMPTS = env.int("STUDIO_WEBHOOK_MAX_ATTEMPTS", default=6)

# The local inference server (python -m workers.server; `make run` starts it and sets
# this): when set, `local` targets generate through it (batch jobs, evals, playground);
# empty: each worker loads the local model in its own process.
STUDIO_LOCAL_SERVER_URL = env.str("STUDIO_LOCAL_SERVER_URL", default="")
# The base-model registry (apps/basemodels): the models store every worker mounts
# (folders in Hugging Face layout, GGUF files) that registrations name relative paths in;
# the memory a fine-tune may plan for on a worker's device, in MiB (0: the worker's free
# memory when known, else STUDIO_WORKER_MEMORY_DEFAULT_MB); the device the pre-flight
# plans for ("cpu" or "cuda", the workers' kind).
STUDIO_MODELS_DIR = env.str("STUDIO_MODELS_DIR", default=str(DATA_DIR / "models-store"))
STUDIO_WORKER_MEMORY_MB = env.int("STUDIO_WORKER_MEMORY_MB", default=0)
STUDIO_WORKER_MEMORY_DEFAULT_MB = env.int("STUDIO_WORKER_MEMORY_DEFAULT_MB", default=8192)
STUDIO_WORKER_DEVICE = env.str("STUDIO_WORKER_DEVICE", default="cpu")
# Multi-device fine-tuning (a job's `devices` above 1: workers/runtime/distributed.py runs
# it under `accelerate launch`): the GPUs one job may use on a CUDA worker; the training
# processes one job may start on a CPU worker (a CPU "device" is one process); DDP
# (replicas, the default) or FSDP (base weights sharded across the devices, for a model
# that does not fit one; CUDA workers); an accelerate config file for the launch (e.g.
# multi-node: num_machines, machine_rank, main_process_ip; README "Multi-device training").
STUDIO_WORKER_DEVICES = env.int("STUDIO_WORKER_DEVICES", default=1)
STUDIO_TRAIN_MAX_CPU_PROCESSES = env.int("STUDIO_TRAIN_MAX_CPU_PROCESSES", default=2)
STUDIO_TRAIN_STRATEGY = env.str("STUDIO_TRAIN_STRATEGY", default="ddp")
STUDIO_ACCELERATE_CONFIG = env.str("STUDIO_ACCELERATE_CONFIG", default="")
# Webhook targets: in production (studio.settings.production) private, loopback and
# link-local addresses are refused unless this allow-list (host names, IPs, CIDRs) names
# them; checked when a URL is saved and again at each delivery (apps/webhooks/targets.py).
STUDIO_WEBHOOK_BLOCK_PRIVATE = env.bool("STUDIO_WEBHOOK_BLOCK_PRIVATE", default=False)
STUDIO_WEBHOOK_ALLOWED_HOSTS = env.list("STUDIO_WEBHOOK_ALLOWED_HOSTS", default=[])
# Fernet keys encrypting webhook signing secrets at rest, first one encrypts
# (apps/webhooks/vault.py); development derives one from SECRET_KEY.
STUDIO_WEBHOOK_SECRET_KEYS = env.str("STUDIO_WEBHOOK_SECRET_KEYS", default="")

# --- Abuse limits ------------------------------------------------------------------
# Reverse proxies whose X-Forwarded-For is believed (apps/core/http.py client_ip): the
# address used for per-address limits, lockouts and the audit log.
STUDIO_TRUSTED_PROXIES = env.list("STUDIO_TRUSTED_PROXIES", default=[])
# API budgets "requests/seconds" per bearer token and per client address, counted in the
# cache (apps/core/ratelimit.py); past one, 429 with Retry-After. Empty turns one off.
STUDIO_API_RATE_PER_TOKEN = env.str("STUDIO_API_RATE_PER_TOKEN", default="200/10")
STUDIO_API_RATE_PER_ADDRESS = env.str("STUDIO_API_RATE_PER_ADDRESS", default="400/10")
# Sign-in lockout (django-axes, counted in the cache): after this many failed sign-ins
# for one username or from one address, both /login/ and /admin/login/ refuse that
# username or address — right password included — until the lockout expires (each
# further failure restarts it) or staff unlock it (admin, `manage.py signin_unlock`).
AXES_ENABLED = True
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_CACHE = "default"
AXES_FAILURE_LIMIT = env.int("STUDIO_SIGNIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(seconds=env.int("STUDIO_SIGNIN_LOCKOUT_SECONDS", default=900))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "apps.core.http.client_ip"
AXES_LOCKOUT_CALLABLE = "apps.squads.signin.lockout_response"
AXES_ENABLE_ADMIN = False  # the cache handler keeps no rows to browse
AXES_VERBOSE = False  # no start-up banner in every manage.py output
# The OpenAPI document and the docs page without signing in (production: off).
STUDIO_API_DOCS_PUBLIC = env.bool("STUDIO_API_DOCS_PUBLIC", default=True)
# --- Input hardening (apps/prompts/sandbox.py, apps/core/http.py) ----------------------
# Prompt templates (check, save, render, generation, batches, evals): wall-clock budget per
# render, loop iterations plus calls, the longest text one operation may build, and the
# largest integer (in bits) `**` and `*` may produce.
STUDIO_TEMPLATE_BUDGET_MS = env.int("STUDIO_TEMPLATE_BUDGET_MS", default=250)
STUDIO_TEMPLATE_MAX_STEPS = env.int("STUDIO_TEMPLATE_MAX_STEPS", default=50_000)
STUDIO_TEMPLATE_MAX_TEXT = env.int("STUDIO_TEMPLATE_MAX_TEXT", default=1_000_000)
STUDIO_TEMPLATE_MAX_INT_BITS = env.int("STUDIO_TEMPLATE_MAX_INT_BITS", default=4096)

# POST …/generate with "wait": true holds a web worker while it waits: at most this many
# such calls at once (across processes sharing the cache), 429 with Retry-After past it.
# Keep it below the number of web workers (scripts/run.sh starts 2).
STUDIO_GENERATE_MAX_WAITING = env.int("STUDIO_GENERATE_MAX_WAITING", default=1)

# --- Telemetry (apps/telemetry) ----------------------------------------------------
# GET /metrics: a bearer token (empty: token access off), or a client address in these
# networks (REMOTE_ADDR). Multiprocess mode follows PROMETHEUS_MULTIPROC_DIR (scripts/run.sh).
STUDIO_METRICS_TOKEN = env.str("STUDIO_METRICS_TOKEN", default="")
STUDIO_METRICS_ALLOW = env.list("STUDIO_METRICS_ALLOW", default=["127.0.0.1/32", "::1/128"])

# JSON lines on stdout through structlog (apps/telemetry/logconfig.py); "console" or
# "auto" (console when DEBUG and a terminal) for development.
LOGGING = log_configure(
    log_format=env.str("STUDIO_LOG_FORMAT", default="json"),
    level=env.str("LOG_LEVEL", default="INFO"),
    debug=DEBUG,
)
