"""Fair share on real worker processes: the queue message only wakes a worker, which
claims the next GPU job from the database in fair-share order."""

import itertools
import time

import pytest

from apps.core.services import gpu_share_set
from apps.generation.models import BatchJob
from tests.core.conftest import queue
from tests.factories import UserFactory
from tests.workerproc import WorkerProcess, purge_queues

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def all_finished(jobs: list[BatchJob], workers: list[WorkerProcess], timeout: float = 180):
    deadline = time.monotonic() + timeout
    ids = [job.pk for job in jobs]
    while time.monotonic() < deadline:
        if not BatchJob.objects.filter(pk__in=ids).exclude(status="succeeded").exists():
            return list(BatchJob.objects.filter(pk__in=ids).order_by("started_at"))
        for worker in workers:
            assert worker.alive(), worker.log
        time.sleep(0.2)
    raise AssertionError("jobs did not finish:\n" + "\n".join(w.log[-4000:] for w in workers))


def test_with_one_worker_the_other_squad_s_single_job_runs_second(two_squads):
    purge_queues()
    acme = queue(two_squads, "acme", 10)
    (beta,) = queue(two_squads, "beta")
    worker = WorkerProcess("fair")
    try:
        order = all_finished([*acme, beta], [worker])
    finally:
        worker.stop()
    assert [job.pk for job in order][:2] == [acme[0].pk, beta.pk]
    assert [job.pk for job in order][2:] == [job.pk for job in acme[1:]]


def test_the_per_squad_limit_holds_with_two_workers(two_squads):
    purge_queues()
    staff = UserFactory(username="platform", is_staff=True)
    acme = queue(two_squads, "acme", 4, rows=6)
    beta = queue(two_squads, "beta", 2, rows=6)
    gpu_share_set(actor=staff, squad_slug="acme", share=1, max_running=1)
    workers = [WorkerProcess("limit-1"), WorkerProcess("limit-2")]
    try:
        done = all_finished([*acme, *beta], workers)
    finally:
        for worker in workers:
            worker.stop()
    spans = sorted((j.started_at, j.finished_at) for j in done if j.squad_id == acme[0].squad_id)
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert started >= ended, "two of acme's jobs ran at once"
    # The second worker was not idle meanwhile: beta's jobs ran beside acme's.
    beta_spans = [(j.started_at, j.finished_at) for j in done if j.squad_id != acme[0].squad_id]
    assert any(b0 < a1 and a0 < b1 for b0, b1 in beta_spans for a0, a1 in spans)
