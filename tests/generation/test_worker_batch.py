"""Batch jobs on real worker processes: a worker killed mid-job (SIGKILL to its whole
process group) is replaced, the job resumes from where it was, and every row ends up
with exactly one Generation. Cancelling stops a running job."""

import json
import time

import pytest

from apps.generation import services
from apps.generation.models import BatchJob
from tests.factories import UserFactory
from tests.generation.conftest import remote_target, text_prompt
from tests.generation.fake_openai import FakeOpenAI
from tests.workerproc import WorkerProcess, purge_queues

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
ROWS = 24


def _wait(predicate, timeout: float, worker: WorkerProcess | None = None, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker died while waiting for {what}:\n{worker.log}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{worker.log}" if worker else ""))


def _create_job(squad, server: FakeOpenAI, rows: int = ROWS) -> BatchJob:
    remote_target(squad, server.url)
    content = "".join(json.dumps({"topic": f"row {i}"}) + "\n" for i in range(rows))
    return services.batch_job_create(
        actor=UserFactory(username="engineer"),
        version=text_prompt(squad),
        content=content.encode(),
        filename="rows.jsonl",
        batch_size=2,  # chunks of 8 rows: several progress commits per job
    )


def _rows_done(job: BatchJob) -> int:
    job.refresh_from_db()
    return job.rows_done


def test_killed_worker_is_replaced_and_the_job_completes_once_per_row(squad):
    purge_queues()
    env = {"STUDIO_JOB_STALE_SECONDS": "3"}
    with FakeOpenAI(delay=0.15) as server:
        first = WorkerProcess("doomed", **env)
        try:
            job = _create_job(squad, server)
            _wait(lambda: 0 < _rows_done(job) < ROWS, 90, first, "the first rows")
        finally:
            first.kill()
        done_at_kill = _rows_done(job)
        assert job.status == "running" and done_at_kill < ROWS
        second = WorkerProcess("rescuer", **env)
        try:
            _wait(
                lambda: BatchJob.objects.get(pk=job.pk).finished, 120, second, "the job to finish"
            )
        finally:
            second.stop()
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    rows = list(job.generations.values_list("row_index", flat=True))
    assert sorted(rows) == list(range(ROWS))  # every row, none twice
    assert job.rows_done == ROWS and job.attempts >= 2
    assert "requeued stale batch jobs" in second.log


def test_cancel_stops_a_running_job(squad):
    purge_queues()
    with FakeOpenAI(delay=0.2) as server:
        worker = WorkerProcess("canceller")
        try:
            job = _create_job(squad, server, rows=40)
            _wait(lambda: _rows_done(job) > 0, 90, worker, "the first rows")
            services.batch_job_cancel(actor=UserFactory(username="engineer"), job=job)
            _wait(lambda: BatchJob.objects.get(pk=job.pk).finished, 60, worker, "the cancel")
        finally:
            worker.stop()
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert 0 < job.generations.count() < 40


def test_chunks_slower_than_the_stale_threshold_do_not_look_like_a_lost_worker(squad):
    """The lease beats on its own thread: a chunk that takes longer than the stale
    threshold (8 rows at 0.6 s a request, threshold 1 s) keeps its worker's claim."""
    purge_queues()
    with FakeOpenAI(delay=0.6) as server:
        worker = WorkerProcess("slow-chunks", STUDIO_JOB_STALE_SECONDS="1")
        try:
            job = _create_job(squad, server, rows=16)
            _wait(lambda: BatchJob.objects.get(pk=job.pk).finished, 120, worker, "the job")
        finally:
            worker.stop()
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.attempts == 1
    assert "requeued stale" not in worker.log
