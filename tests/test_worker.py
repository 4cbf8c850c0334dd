"""A real Celery worker process executes what the web side enqueues.

The worker runs against the same test database and the configured broker
(Redis in CI, kombu's filesystem transport on the embedded defaults).
"""

import time
from pathlib import Path

import pytest
from django.conf import settings

from apps.audit.models import ChainVerification
from apps.squads import services
from tests.conftest import ApiClient
from tests.factories import UserFactory, make_squad
from tests.workerproc import WorkerProcess, purge_queues

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker():
    purge_queues()
    process = WorkerProcess()
    yield process.process
    process.stop()


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
        assert worker.poll() is None, (Path(settings.DATA_DIR) / "test-worker.log").read_text()
        time.sleep(0.2)
        verification.refresh_from_db()
    log = (Path(settings.DATA_DIR) / "test-worker.log").read_text()
    assert verification.finished_at is not None, f"worker did not finish the task:\n{log}"
    assert verification.status == ChainVerification.Status.INTACT, verification.detail
    # squad.created, owner added, sme added, token created, verification requested
    assert verification.events_checked == 5
    assert "audit.chain_verify" in log

    polled = ApiClient(secret).call("GET", f"/api/v1/audit/verifications/{verification_id}")
    assert polled.json()["status"] == "intact"
