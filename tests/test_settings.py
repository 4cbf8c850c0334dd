import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.celery import Queue
from studio.celery import app as celery_app

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        # DJANGO_ALLOW_ASYNC_UNSAFE is set while a Playwright driver runs in this process;
        # a child `check --deploy` would report it (async.E001).
        if k not in ("SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE")
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_to_start_without_a_real_secret_key():
    result = _manage("check", "--settings=studio.settings.production")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_to_start_without_provenance_keys(tmp_path):
    result = _manage(
        "check",
        "--settings=studio.settings.production",
        SECRET_KEY="k" + "x9Qz7-pL2!mR4vT8" * 4,
        STUDIO_DATA_DIR=str(tmp_path),
        STUDIO_PROVENANCE_KEYS="",
    )
    assert result.returncode != 0
    assert "STUDIO_PROVENANCE_KEYS must be set" in result.stderr


CHECKPOINT_KEY = "c1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
WEBHOOK_KEY = "q3m5hZ0kQb0e1x8fX2V8m6T9b9o4m2y0wS9hD5dKp1c="


PROVENANCE_KEY = "k1:c2VjcmV0LXNpZ25pbmcta2V5LW9mLTMyLWJ5dGVzISE="


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("STUDIO_AUDIT_CHECKPOINT_KEYS", "STUDIO_AUDIT_CHECKPOINT_KEYS"),
        ("STUDIO_WEBHOOK_SECRET_KEYS", "STUDIO_WEBHOOK_SECRET_KEYS must be set"),
    ],
)
def test_production_refuses_to_start_without_each_key_set(tmp_path, missing, message):
    keys = {
        "STUDIO_PROVENANCE_KEYS": PROVENANCE_KEY,
        "STUDIO_AUDIT_CHECKPOINT_KEYS": CHECKPOINT_KEY,
        "STUDIO_WEBHOOK_SECRET_KEYS": WEBHOOK_KEY,
    }
    result = _manage(
        "check",
        "--settings=studio.settings.production",
        SECRET_KEY="k" + "x9Qz7-pL2!mR4vT8" * 4,
        STUDIO_DATA_DIR=str(tmp_path),
        **{**keys, missing: ""},
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_check_deploy_prints_no_warnings(tmp_path):
    result = _manage(
        "check",
        "--deploy",
        "--fail-level=WARNING",
        "--settings=studio.settings.production",
        SECRET_KEY="k" + "x9Qz7-pL2!mR4vT8" * 4,
        STUDIO_DATA_DIR=str(tmp_path),
        ALLOWED_HOSTS="studio.example.org",
        STUDIO_PROVENANCE_KEYS="k1:c2VjcmV0LXNpZ25pbmcta2V5LW9mLTMyLWJ5dGVzISE=",
        STUDIO_AUDIT_CHECKPOINT_KEYS=CHECKPOINT_KEY,
        STUDIO_WEBHOOK_SECRET_KEYS=WEBHOOK_KEY,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_celery_reliability_settings():
    conf = celery_app.conf
    assert {q.value for q in Queue} == {"default", "gpu"}
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_default_queue == "default"
    celery_app.loader.import_default_modules()  # what a worker registers at start
    router = celery_app.amqp.router

    def queue_of(name: str) -> str:
        return router.route({}, name, task_type=celery_app.tasks[name])["queue"].name

    assert queue_of("generation.batch_job") == "gpu"
    assert queue_of("generation.run") == "gpu"
    assert queue_of("audit.chain_verify") == "default"
    # A send by name from a process that did not import the task keeps its queue.
    assert router.route({"queue": "gpu"}, "generation.batch_job")["queue"].name == "gpu"
    from django.conf import settings

    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility > settings.GPU_TASK_TIME_LIMIT


def test_every_task_has_a_time_limit_default_queue_ones_the_configured_one():
    from django.conf import settings

    celery_app.loader.import_default_modules()
    assert celery_app.conf.task_time_limit == settings.DEFAULT_TASK_TIME_LIMIT
    ours = {n: t for n, t in celery_app.tasks.items() if not n.startswith("celery.")}
    assert "generation.batch_job" in ours
    for name, task in ours.items():
        assert task.time_limit, f"{name} has no time limit"
        if getattr(task, "studio_queue", "default") == "gpu":
            assert task.time_limit <= settings.GPU_TASK_TIME_LIMIT, name


def test_web_settings_never_import_torch():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os, sys; os.environ['DJANGO_SETTINGS_MODULE']='studio.settings.base';"
            "django.setup(); import studio.urls; print('torch' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "False", result.stderr


def test_redis_cache_backend_reuses_its_client():
    import redis

    from studio.cache import StudioRedisCache

    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/9").ping()
    except redis.ConnectionError:
        import pytest

        pytest.skip("no Redis on 127.0.0.1:6379")
    backend = StudioRedisCache("redis://127.0.0.1:6379/9", {"KEY_PREFIX": "studio-test"})
    backend.set("k", {"v": 1}, 30)
    assert backend.get("k") == {"v": 1}
    assert backend.get_many(["k", "missing"]) == {"k": {"v": 1}}
    client = backend._cache
    assert client.get_client(write=True) is client.get_client(write=True)
    backend.delete("k")


def test_production_defaults_keep_the_api_docs_private_and_webhooks_off_private_networks(
    tmp_path,
):
    result = _manage(
        "shell",
        "--settings=studio.settings.production",
        "-c",
        "from django.conf import settings as s; "
        "print(s.STUDIO_API_DOCS_PUBLIC, s.STUDIO_WEBHOOK_BLOCK_PRIVATE)",
        SECRET_KEY="k" + "x9Qz7-pL2!mR4vT8" * 4,
        STUDIO_DATA_DIR=str(tmp_path),
        STUDIO_PROVENANCE_KEYS="k1:c2VjcmV0LXNpZ25pbmcta2V5LW9mLTMyLWJ5dGVzISE=",
        STUDIO_WEBHOOK_SECRET_KEYS=WEBHOOK_KEY,
        STUDIO_AUDIT_CHECKPOINT_KEYS=CHECKPOINT_KEY,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False True"
