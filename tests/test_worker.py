"""A real Celery worker process executes what the web side enqueues.

The worker runs against the same test database and the configured broker
(Redis in CI, kombu's filesystem transport on the embedded defaults).
"""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from apps.audit.models import ChainVerification
from apps.squads import services
from studio.celery import app as celery_app
from tests.conftest import ApiClient
from tests.factories import UserFactory, make_squad

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        user = db.get("USER") or ""
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        return f"postgres://{auth}{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


@pytest.fixture
def worker():
    """Start `celery worker` on both queues; stop it after the test."""
    with celery_app.connection_for_write() as conn:
        for queue in ("default", "gpu"):
            # A queue that does not exist yet has nothing to purge.
            with contextlib.suppress(Exception):
                conn.default_channel.queue_purge(queue)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "studio.settings.base",
        "DATABASE_URL": _database_url(),
        "STUDIO_DATA_DIR": str(settings.DATA_DIR),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
    log = open(settings.DATA_DIR / "test-worker.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "studio",
            "worker",
            "-Q",
            "default,gpu",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_worker_runs_a_task_enqueued_by_the_web_side(worker):
    staff = UserFactory(username="platform", is_staff=True)
    owner = UserFactory(username="owner")
    make_squad(owner=owner, slug="acme", members={"sme": ["sme"]})
    _, secret = services.api_token_create(actor=staff, name="ops")

    response = ApiClient(secret).call("POST", "/api/v1/audit/verifications")
    assert response.status_code == 202, response.content
    verification_id = response.json()["id"]
    assert response.json()["status"] == "queued"

    deadline = time.monotonic() + 60
    verification = ChainVerification.objects.get(pk=verification_id)
    while verification.finished_at is None and time.monotonic() < deadline:
        assert worker.poll() is None, (settings.DATA_DIR / "test-worker.log").read_text()
        time.sleep(0.2)
        verification.refresh_from_db()
    log = (settings.DATA_DIR / "test-worker.log").read_text()
    assert verification.finished_at is not None, f"worker did not finish the task:\n{log}"
    assert verification.status == ChainVerification.Status.INTACT, verification.detail
    # squad.created, owner added, sme added, token created, verification requested
    assert verification.events_checked == 5
    assert "audit.chain_verify" in log

    polled = ApiClient(secret).call("GET", f"/api/v1/audit/verifications/{verification_id}")
    assert polled.json()["status"] == "intact"
