"""The one job lifecycle (apps.core.jobs) on real Celery worker processes, for each of the
four kinds: batch generation and eval runs against a fake OpenAI-compatible server, and
fine-tunes and adapter comparisons on tests/fakeworker.py's stand-in runtime.

- kill -9 mid-job: the job is recovered and finishes once — one finish audit event, one
  job.finished webhook delivery, one metric increment, no duplicate rows;
- SIGSTOP past the stale threshold, another worker takes over, SIGCONT: the first worker
  finds its lease gone and writes, finishes and emits nothing;
- a job whose workers die max_attempts times ends failed with the reason.

Metrics are read from the workers' prometheus multiprocess files."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from apps.audit.models import AuditEvent
from apps.core.models import Job
from apps.evals import services as evals
from apps.evals.models import EvalRun
from apps.finetune import comparisons, jobs
from apps.finetune.models import Adapter, AdapterComparison, FineTuneJob
from apps.generation import services as generation
from apps.generation.models import BatchJob
from apps.webhooks import services as webhooks
from apps.webhooks.models import WebhookDelivery
from tests.evals.conftest import add_case
from tests.factories import UserFactory
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload
from tests.generation.conftest import remote_target, text_prompt
from tests.generation.fake_openai import FakeOpenAI
from tests.workerproc import WorkerProcess, purge_queues

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
STALE_SECONDS = "2"
ROWS = 24
CASES = 12
STEPS = 12


def wait(predicate: Callable[[], Any], timeout: float, what: str, *workers: WorkerProcess):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for worker in workers:
            if not worker.alive():
                raise AssertionError(f"worker {worker.name} died waiting for {what}:\n{worker.log}")
        time.sleep(0.1)
    logs = "\n".join(f"--- {w.name}\n{w.log[-6000:]}" for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


@dataclass
class Kind:
    """How the tests drive one kind: make a job, see it under way, check its rows."""

    name: str
    model: type[Job]
    finished_action: str
    fake_runtime: bool
    create: Callable[[Any], Job]
    under_way: Callable[[Job], bool]
    rows_once: Callable[[Job], None]


def _batch(ctx) -> Job:
    content = "".join(f'{{"topic": "row {i}"}}\n' for i in range(ROWS)).encode()
    return generation.batch_job_create(
        actor=ctx.engineer,
        version=ctx.prompt,
        content=content,
        filename="rows.jsonl",
        batch_size=2,  # chunks of 8 rows
    )


def _batch_rows(job: BatchJob) -> None:
    rows = sorted(job.generations.values_list("row_index", flat=True))
    assert rows == list(range(ROWS)) and job.rows_done == ROWS


def _eval(ctx) -> Job:
    for i in range(CASES):
        add_case(
            ctx.prompt.template, f"case {i}", f"topic {i}", [{"type": "contains", "value": "t"}]
        )
    return evals.eval_run_create(actor=ctx.engineer, version=ctx.prompt, batch_size=1)


def _eval_rows(run: EvalRun) -> None:
    positions = sorted(run.results.values_list("position", flat=True))
    assert positions == list(range(CASES)) and run.done == CASES
    assert run.results.filter(generation__isnull=False).count() == CASES


def _finetune(ctx) -> Job:
    return jobs.finetune_job_create(
        actor=ctx.engineer,
        dataset_version=ctx.dataset_version,
        lora={"r": 4},
        train={"max_steps": STEPS, "checkpoint_every": 2, "batch_size": 2, "max_seq_len": 64},
    )


def _finetune_rows(job: FineTuneJob) -> None:
    assert Adapter.objects.filter(job=job).count() == 1
    steps = [p[0] for p in job.points]
    assert job.step == STEPS and steps == sorted(set(steps)) and steps[-1] == STEPS


def _comparison(ctx) -> Job:
    return comparisons.adapter_comparison_create(
        actor=ctx.engineer, adapter=ctx.adapter, prompts=["one", "two", "three", "four"]
    )


def _comparison_rows(comparison: AdapterComparison) -> None:
    assert [o["adapter"] for o in comparison.outputs] == ["adapter answer"] * 4
    assert comparison.base_loss == 2.0 and comparison.adapter_loss == 1.5


KINDS = {
    "batch": Kind(
        "batch",
        BatchJob,
        "generation.batch_finished",
        False,
        _batch,
        lambda job: job.rows_done > 0,
        _batch_rows,
    ),
    "eval": Kind(
        "eval", EvalRun, "eval.run_finished", False, _eval, lambda run: run.done > 0, _eval_rows
    ),
    "finetune": Kind(
        "finetune",
        FineTuneJob,
        "finetune.job_finished",
        True,
        _finetune,
        lambda job: job.step >= 3,
        _finetune_rows,
    ),
    "comparison": Kind(
        "comparison",
        AdapterComparison,
        "finetune.comparison_finished",
        True,
        _comparison,
        lambda comparison: comparison.status == "running",
        _comparison_rows,
    ),
}


class Context:
    """What every kind needs: a squad with a webhook on job.finished, a fake model server
    and its target, a prompt, a dataset version and a trained (stand-in) adapter."""

    def __init__(self, squad, server: FakeOpenAI, monkeypatch) -> None:
        self.squad = squad
        self.engineer = UserFactory(username="engineer")
        webhooks.webhook_create(
            actor=UserFactory(username="owner"),
            squad=squad,
            url="https://receiver.example/hook",
            events=["job.finished"],
        )
        remote_target(squad, server.url)
        self.prompt = text_prompt(squad)
        fake_training.install(monkeypatch, fake_training.Script())
        rows = [chat(f"Where is parcel {i}?", f"Parcel {i} left.") for i in range(12)]
        self.dataset_version = upload(make_dataset(squad), jsonl(*rows), eval_fraction=0.25)
        trained = _finetune(self)
        jobs.finetune_job_run(job_id=trained.pk)
        self.adapter = Adapter.objects.get(job=trained)


@pytest.fixture
def ctx(squad, settings, tmp_path, monkeypatch):
    settings.DATA_DIR = tmp_path  # datasets, adapters and work dirs the workers share
    purge_queues()
    with FakeOpenAI(delay=0.25) as server:
        yield Context(squad, server, monkeypatch)


@pytest.fixture
def metrics_dir(tmp_path):
    path = tmp_path / "prometheus"
    path.mkdir()
    return path


def start(kind: Kind, name: str, metrics_dir, **env: str) -> WorkerProcess:
    return WorkerProcess(
        f"{kind.name}-{name}",
        fake_runtime=kind.fake_runtime,
        STUDIO_JOB_STALE_SECONDS=STALE_SECONDS,
        STUDIO_FAKE_STEP_SECONDS="0.4",
        STUDIO_WEBHOOK_TIMEOUT="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        **env,
    )


def fresh(job: Job) -> Job:
    return type(job).objects.get(pk=job.pk)


def metric(metrics_dir, kind: str, outcome: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    labels = {"type": kind, "outcome": outcome}
    return registry.get_sample_value("studio_jobs_total", labels) or 0.0


def assert_finished_once(kind: Kind, job: Job, metrics_dir, status: str = "succeeded") -> None:
    events = AuditEvent.objects.filter(action=kind.finished_action, target_id=str(job.pk))
    assert [e.data["status"] for e in events] == [status]
    deliveries = [
        d.payload["data"]
        for d in WebhookDelivery.objects.filter(event="job.finished")
        if d.payload["data"]["kind"] == kind.name and d.payload["data"]["job"] == job.pk
    ]
    assert [d["status"] for d in deliveries] == [status]
    assert metric(metrics_dir, kind.name, status) == 1.0


@pytest.mark.parametrize("name", KINDS)
def test_a_killed_worker_s_job_is_recovered_and_finishes_once(name, ctx, metrics_dir):
    kind = KINDS[name]
    first = start(kind, "doomed", metrics_dir)
    try:
        job = kind.create(ctx)
        wait(lambda: kind.under_way(fresh(job)), 120, "the job under way", first)
    finally:
        first.kill()
    assert fresh(job).status == "running"
    second = start(kind, "rescuer", metrics_dir)
    try:
        wait(lambda: fresh(job).finished, 120, "the job to finish", second)
    finally:
        second.stop()
    job = fresh(job)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    kind.rows_once(job)
    assert_finished_once(kind, job, metrics_dir)
    assert f"requeued stale {kind.name} jobs" in second.log


@pytest.mark.parametrize("name", KINDS)
def test_a_paused_worker_that_lost_its_lease_writes_and_emits_nothing(name, ctx, metrics_dir):
    kind = KINDS[name]
    first = start(kind, "paused", metrics_dir)
    second = None
    try:
        job = kind.create(ctx)
        wait(lambda: kind.under_way(fresh(job)), 120, "the job under way", first)
        first.pause()  # past the stale threshold: taken for lost
        held_by = fresh(job).worker
        second = start(kind, "successor", metrics_dir)
        wait(lambda: fresh(job).attempts == 2, 120, "the second claim", second)
        first.resume()
        wait(lambda: "lost its lease" in first.log, 60, "the first worker to notice", first)
        wait(lambda: fresh(job).finished, 120, "the job to finish", second, first)
        # The first worker had a chunk, a step or a generation in flight: let it try.
        time.sleep(3)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    job = fresh(job)
    assert job.status == "succeeded", job.error
    assert job.worker != held_by and job.attempts == 2
    kind.rows_once(job)
    assert_finished_once(kind, job, metrics_dir)


@pytest.mark.parametrize("name", KINDS)
def test_a_job_whose_workers_keep_dying_fails_with_the_reason(name, ctx, metrics_dir, settings):
    kind = KINDS[name]
    settings.STUDIO_JOB_MAX_ATTEMPTS = 2
    job = kind.create(ctx)
    assert job.max_attempts == 2
    for attempt in (1, 2):
        worker = start(kind, f"dies-{attempt}", metrics_dir)
        try:
            wait(
                lambda attempt=attempt: (
                    fresh(job).attempts == attempt and kind.under_way(fresh(job))
                ),
                120,
                f"attempt {attempt} under way",
                worker,
            )
        finally:
            worker.kill()
    last = start(kind, "sweeper", metrics_dir)
    try:
        wait(lambda: fresh(job).finished, 120, "the job to be given up", last)
    finally:
        last.stop()
    job = fresh(job)
    assert job.status == "failed" and job.attempts == 2
    assert job.error.startswith("worker_lost") and "stopped 2 times" in job.error
    assert_finished_once(kind, job, metrics_dir, status="failed")
