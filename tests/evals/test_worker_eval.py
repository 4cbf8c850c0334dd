"""Eval runs on a real worker process: the run the service queued at commit executes on
the gpu queue, and a run left "running" by a lost worker is requeued by the sweeper."""

import time

import pytest
from django.utils import timezone

from apps.evals import services
from apps.evals.models import EvalRun
from tests.evals.conftest import add_case, remote_target, text_prompt
from tests.factories import UserFactory
from tests.generation.fake_openai import FakeOpenAI
from tests.workerproc import WorkerProcess, purge_queues

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _finished(run_id: int, worker: WorkerProcess, timeout: float = 90) -> EvalRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = EvalRun.objects.get(pk=run_id)
        if run.finished:
            return run
        if not worker.alive():
            raise AssertionError(f"worker died:\n{worker.log}")
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish:\n{worker.log}")


def test_worker_runs_queued_and_stale_runs(squad):
    purge_queues()
    with FakeOpenAI() as server:
        remote_target(squad, server.url)
        version = text_prompt(squad)
        add_case(version.template, "tides", "tides", [{"type": "contains", "value": "tides"}])
        engineer = UserFactory(username="engineer")
        queued = services.eval_run_create(actor=engineer, version=version)  # enqueued at commit
        # A run whose worker died: no message left, a stale heartbeat.
        lost = EvalRun.objects.create(
            squad=squad,
            version=version,
            target=queued.target,
            cases=queued.cases,
            total=1,
            status=EvalRun.Status.RUNNING,
            heartbeat_at=timezone.now() - timezone.timedelta(minutes=10),
            attempts=1,
            created_by=engineer,
        )
        worker = WorkerProcess("evals", STUDIO_JOB_STALE_SECONDS="3")
        try:
            first = _finished(queued.pk, worker)
            second = _finished(lost.pk, worker)
        finally:
            worker.stop()
    assert first.status == "succeeded" and first.pass_rate == 1.0, first.error
    assert second.status == "succeeded" and second.attempts == 2 and second.done == 1
    assert "requeued stale eval jobs" in worker.log
