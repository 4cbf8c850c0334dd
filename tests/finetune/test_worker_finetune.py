"""A fine-tune on real worker processes and the real runtime (SmolLM2, CPU): the worker is
killed (SIGKILL to its whole process group) mid-training, a new worker's sweeper requeues
the job, training resumes from the last checkpoint — the step count continues — and the
job ends with an adapter."""

import time

import pytest

from apps.finetune import jobs
from apps.finetune.models import Adapter, FineTuneJob
from tests.factories import UserFactory
from tests.finetune.conftest import chat, jsonl, make_dataset, upload
from tests.workerproc import WorkerProcess, purge_queues

pytest.importorskip("workers.runtime.training")
pytestmark = [pytest.mark.worker, pytest.mark.model, pytest.mark.django_db(transaction=True)]
STEPS, CHECKPOINT_EVERY = 24, 3


def _wait(predicate, timeout: float, worker: WorkerProcess, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if not worker.alive():
            raise AssertionError(f"worker died while waiting for {what}:\n{worker.log}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{worker.log}")


def _job(pk: int) -> FineTuneJob:
    return FineTuneJob.objects.get(pk=pk)


def test_killed_worker_resumes_from_the_checkpoint_and_the_job_succeeds(squad):
    purge_queues()
    rows = [chat(f"Where is parcel {i}?", f"Parcel {i} left the depot today.") for i in range(40)]
    version = upload(make_dataset(squad), jsonl(*rows))
    env = {"STUDIO_JOB_STALE_SECONDS": "4"}
    first = WorkerProcess("doomed", **env)
    try:
        job = jobs.finetune_job_create(
            actor=UserFactory(username="engineer"),
            dataset_version=version,
            lora={"r": 4},
            train={
                "max_steps": STEPS,
                "checkpoint_every": CHECKPOINT_EVERY,
                "eval_every": 6,
                "batch_size": 2,
                "max_seq_len": 64,
            },
        )
        # Past at least one checkpoint, well before the end.
        _wait(lambda: _job(job.pk).step >= CHECKPOINT_EVERY + 2, 900, first, "training steps")
    finally:
        first.kill()
    at_kill = _job(job.pk)
    assert at_kill.status == "running" and at_kill.step < STEPS
    second = WorkerProcess("rescuer", **env)
    try:
        _wait(lambda: _job(job.pk).finished, 900, second, "the job to finish")
    finally:
        second.stop()
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.attempts >= 2 and job.step == STEPS
    # The second run started from a checkpoint, not from zero.
    resumed = job.resumed_at_steps[-1]
    assert resumed >= CHECKPOINT_EVERY and resumed % CHECKPOINT_EVERY == 0, job.resumed_at_steps
    steps = [p[0] for p in job.points]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    assert "requeued stale finetune jobs" in second.log
    adapter = Adapter.objects.get(job=job)
    assert adapter.size_bytes > 0 and len(adapter.sha256) == 64
