"""The one lifecycle of every long job: batch generation, fine-tunes, adapter
comparisons, eval runs, and whatever kind registers next.

A kind registers once (`register`): its model (a subclass of apps.core.models.Job), the
Celery task that wakes a worker for it, its queue, its audit action prefix, its metric
and webhook label, and what it emits when it finishes. Then:

- `enqueue(job)` sends the kind's task by name when the transaction commits (services
  never import a tasks module);
- a worker's task calls `run_next(queue)`: the next job of that queue in fair-share
  order (apps.core.fairshare) is claimed atomically with a new lease token, and the
  kind's runner gets a `Lease`. The message only wakes a worker; the database decides
  which job runs, so a message and a job need not match;
- `Lease` beats on its own thread every quarter of the stale threshold, whatever the job
  is doing; `should_stop()` answers "cancel requested or lease lost"; every progress
  write (`update`), result write (`fenced`) and `finish` is fenced by the lease token, so
  a worker that was presumed lost and whose job was claimed again cannot write, finish
  or emit anything;
- `finish` is the one emission path: one audit event `<prefix>_finished`, one
  `job.finished` webhook, one `studio_jobs` metric, in (or at commit of) the
  transaction that ends the job;
- `cancel` ends a queued job at once and asks a running one to stop;
- `recover()` is one pass over every registered kind: a running job whose heartbeat is
  stale is requeued, or failed with the reason once it has used its max attempts;
  `Lease.retry` does the same for a job whose work died under a live worker (a killed
  training process).
"""

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core import queues
from apps.core.exceptions import Conflict
from apps.core.models import Job, JobStatus
from apps.telemetry.metrics import job_finished
from apps.webhooks import emitters as webhooks

logger = logging.getLogger(__name__)
ERROR_MAX = 5000


@dataclass(frozen=True)
class JobKind:
    """A registered kind of long job.

    `run(lease)` does the work; it ends the job with `lease.finish(...)`, or returns
    after `lease.should_stop()` (the lifecycle then records a cancel, or nothing when the
    lease was lost). `summary(job)` is the kind's part of the finish audit event and
    webhook; `url(job)` the job's page."""

    name: str
    label: str  # how a person names one: "Batch", "Fine-tune job"
    model: type[Job]
    task: str
    queue: queues.Queue
    audit_prefix: str
    run: Callable[["Lease"], None]
    summary: Callable[[Any], dict[str, Any]]
    url: Callable[[Any], str]
    related: tuple[str, ...] = ()
    # fields set on a job failed because its workers kept dying, e.g. a failure kind
    lost_fields: dict[str, Any] = field(default_factory=dict)
    # the field holding how many devices a job occupies (fair share charges its wall
    # seconds times that); None: one
    devices_field: str | None = None


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Call once per kind, from its app's ready() (a second call replaces the first)."""
    KINDS[kind.name] = kind
    return kind


def kind_of(job: Job) -> JobKind:
    for kind in KINDS.values():
        if isinstance(job, kind.model):
            return kind
    raise LookupError(f"{type(job).__name__} is not a registered job kind")


def kinds_on(queue: str) -> list[JobKind]:
    return [kind for kind in KINDS.values() if kind.queue == queue]


def stale_after() -> timedelta:
    return timedelta(seconds=settings.STUDIO_JOB_STALE_SECONDS)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- web side -----------------------------------------------------------------------------


def enqueue(job: Job) -> None:
    """Wake a worker for `job` when the current transaction commits (by task name)."""
    kind = kind_of(job)
    transaction.on_commit(lambda: _send(kind, job.pk))


def _send(kind: JobKind, job_id: int) -> None:
    queues.send(kind.task, job_id, queue=kind.queue)


def cancel(*, actor: Any, job: Job, request: HttpRequest | None = None) -> Job:
    """Call inside the caller's transaction, after its permission check. A queued job is
    cancelled at once (and finishes through `finish`); a running one is asked to stop:
    its worker sees `should_stop()` and ends it. Writes `<prefix>_cancel_requested`."""
    kind = kind_of(job)
    job = kind.model.objects.select_for_update().get(pk=job.pk)
    if job.finished:
        raise Conflict(f"{_title(kind, job)} is already {job.status}.", field="status")
    if job.cancel_requested:
        raise Conflict(f"{_title(kind, job)} is already being cancelled.", field="status")
    job.cancel_requested = True
    job.save(update_fields=["cancel_requested"])
    audit_log(
        actor=actor,
        action=f"{kind.audit_prefix}_cancel_requested",
        squad=job.squad,
        target=job,
        data={"status": job.status, **kind.summary(job)},
        request=request,
    )
    if job.status == JobStatus.QUEUED:
        _close(kind, job, JobStatus.CANCELLED)
    return job


def _title(kind: JobKind, job: Job) -> str:
    return f"{kind.label} {job.pk}"


# --- worker side ---------------------------------------------------------------------------


class LeaseLost(Exception):
    """The job was claimed again since this lease was handed out; nothing was written."""


class Lease:
    """One worker's claim on one job; a context manager that beats while it is held."""

    def __init__(self, kind: JobKind, job: Job) -> None:
        self.kind, self.job, self.token = kind, job, job.lease_token
        self.lost = False
        self.closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat_forever, name=f"lease-{kind.name}-{job.pk}", daemon=True
        )

    def holding(self) -> QuerySet:
        """The job's row while this lease holds it."""
        return self.kind.model.objects.filter(
            pk=self.job.pk, lease_token=self.token, status=JobStatus.RUNNING
        )

    def update(self, **fields: Any) -> bool:
        """Write progress while the lease holds (with a heartbeat); False when lost."""
        if self.lost or not self.holding().update(heartbeat_at=timezone.now(), **fields):
            self._lose()
            return False
        return True

    def should_stop(self) -> bool:
        """Cancel requested, or the lease lost: stop at the next safe point."""
        if self.lost:
            return True
        cancel = self.holding().values_list("cancel_requested", flat=True).first()
        if cancel is None:
            self._lose()
            return True
        return cancel

    @contextmanager
    def fenced(self) -> Iterator[Job]:
        """A transaction in which the job's row is locked and still held by this lease;
        LeaseLost (and nothing written) otherwise. Write results inside it."""
        with transaction.atomic():
            row = self.holding().select_for_update(of=("self",)).first()
            if row is None:
                self._lose()
                raise LeaseLost(f"{self.kind.name} {self.job.pk}")
            yield row

    def finish(
        self,
        status: str,
        error: str = "",
        write: Callable[[Job], None] | None = None,
        **fields: Any,
    ) -> bool:
        """End the job while the lease holds: `write(job)` (results), then the one
        emission path. False, with nothing written, when the lease was lost."""
        try:
            with self.fenced() as row:
                for name, value in fields.items():
                    setattr(row, name, value)
                if write is not None:
                    write(row)
                _close(self.kind, row, status, error, list(fields))
                # Before commit: a heartbeat that waited on the row lock then finds the
                # job finished, and must not take that for a lost lease.
                self.closed = True
        except LeaseLost:
            return False
        self.job = row
        return True

    def retry(self, reason: str, **fields: Any) -> bool:
        """End this attempt without an outcome: its work died under a live worker (a
        training process killed). As `recover()` does for a lost worker, the job is queued
        again (and resumes from its checkpoints), or, once it has used its max attempts,
        fails with `reason` and `fields` (default: the kind's lost_fields). False, with
        nothing written, when the lease was lost."""
        try:
            with self.fenced() as row:
                if row.attempts >= row.max_attempts:
                    fields = {**self.kind.lost_fields, **fields}
                    for name, value in fields.items():
                        setattr(row, name, value)
                    _close(self.kind, row, JobStatus.FAILED, reason, list(fields))
                else:
                    logger.warning(
                        "%s %s: requeued (attempt %s of %s): %s",
                        self.kind.name,
                        row.pk,
                        row.attempts,
                        row.max_attempts,
                        reason,
                    )
                    _requeue(self.kind, row)
                self.closed = True
        except LeaseLost:
            return False
        self.job = row
        return True

    def _lose(self) -> None:
        if not self.lost and not self.closed:
            self.lost = True
            logger.warning(
                "%s %s: lost its lease (claimed again); this worker writes nothing more",
                self.kind.name,
                self.job.pk,
            )

    def _beat_forever(self) -> None:
        interval = max(settings.STUDIO_JOB_STALE_SECONDS / 4, 0.2)
        try:
            while not self._stop.wait(interval):
                if not self.holding().update(heartbeat_at=timezone.now()):
                    self._lose()
                    return
        finally:
            close_old_connections()

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def claim(kind: JobKind, job_id: int) -> Lease | None:
    """Claim one job (queued, or running on a claim gone stale) with a new lease token.
    None when it is finished or a live worker holds it."""
    with transaction.atomic():
        job = kind.model.objects.select_for_update(of=("self",)).get(pk=job_id)
        if job.finished:
            return None
        held = job.status == JobStatus.RUNNING and job.heartbeat_at is not None
        if held and timezone.now() - job.heartbeat_at < stale_after():
            return None
        return _take(kind, job)


def claim_next(queue: str) -> Lease | None:
    """Claim the next job of `queue` in fair-share order (apps.core.fairshare); None when
    no queued job may start now. Claimers of one queue take turns (PostgreSQL: an
    advisory lock; SQLite: its write transactions are serial), so the per-squad limit
    holds however many workers ask at once."""
    from apps.core import fairshare

    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"jobs:{queue}"])
        picked = fairshare.next_job(queue)
        if picked is None:
            return None
        kind, job_id = picked
        job = (
            kind.model.objects.select_for_update(of=("self",))
            .filter(pk=job_id, status=JobStatus.QUEUED)
            .first()
        )
        return _take(kind, job) if job is not None else None


def _take(kind: JobKind, job: Job) -> Lease:
    now = timezone.now()
    kind.model.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        worker=worker_name(),
        lease_token=uuid.uuid4().hex,
        heartbeat_at=now,
        attempts=F("attempts") + 1,
        started_at=Coalesce(F("started_at"), now),
    )
    related = kind.model.objects.select_related(*kind.related) if kind.related else None
    job = (related or kind.model.objects).get(pk=job.pk)
    return Lease(kind, job)


def run(kind_name: str, job_id: int) -> Job | None:
    """Claim and run one given job (tests, management); None when it cannot be claimed."""
    kind = KINDS[kind_name]
    lease = claim(kind, job_id)
    return _run(lease) if lease is not None else None


def run_next(queue: str) -> Job | None:
    """A worker's task body: run the next job of `queue`, if one may start; then, while
    queued jobs remain, wake another worker (a job held back by its squad's limit has no
    message of its own once its turn comes)."""
    lease = claim_next(queue)
    if lease is None:
        return None
    try:
        return _run(lease)
    finally:
        for kind in kinds_on(queue):
            waiting = kind.model.objects.filter(status=JobStatus.QUEUED).values_list("pk")
            first = waiting.order_by("created_at").first()
            if first is not None:
                _send(kind, first[0])
                break


def wake_task(name: str, queue: queues.Queue) -> Any:
    """A job kind's Celery task, for its app's tasks.py: its message wakes a worker of
    `queue`, which runs the next job there in fair-share order (the job id it carries is
    for the logs). GPU tasks stop after STUDIO_GPU_TASK_TIME_LIMIT."""
    from celery import shared_task

    def wake(job_id: int) -> None:
        run_next(queue)

    wake.__name__ = wake.__qualname__ = name.replace(".", "_")
    limit = (
        settings.GPU_TASK_TIME_LIMIT
        if queue == queues.Queue.GPU
        else settings.DEFAULT_TASK_TIME_LIMIT
    )
    return shared_task(
        name=name, studio_queue=queue.value, acks_late=True, max_retries=0, time_limit=limit
    )(wake)


def _run(lease: Lease) -> Job | None:
    kind = lease.kind
    # The job this worker runs, whatever job id its message carried.
    structlog.contextvars.bind_contextvars(job_kind=kind.name, job_id=lease.job.pk)
    try:
        with lease:
            kind.run(lease)
    except LeaseLost:
        return None
    except Exception as exc:
        if not lease.closed:
            lease.finish(JobStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    if not lease.closed and not lease.should_stop():
        lease.finish(JobStatus.FAILED, f"{kind.label} ended without an outcome.")
    elif not lease.closed and not lease.lost:
        lease.finish(JobStatus.CANCELLED)
    return lease.job if lease.closed else None


# --- ending ---------------------------------------------------------------------------------


def _close(
    kind: JobKind,
    job: Job,
    status: str,
    error: str = "",
    fields: list[str] | None = None,
) -> None:
    """The one way a job ends: its terminal state, one audit event, one webhook (both in
    this transaction), one metric (at commit). Call with the row locked."""
    now = timezone.now()
    job.status, job.error, job.finished_at = status, error[:ERROR_MAX], now
    job.heartbeat_at = now
    job.save(update_fields=["status", "error", "finished_at", "heartbeat_at", *(fields or [])])
    summary = kind.summary(job)
    audit_log(
        actor=None,
        action=f"{kind.audit_prefix}_finished",
        squad=job.squad,
        target=job,
        data={"status": status, "attempts": job.attempts, "error": error[:500], **summary},
    )
    webhooks.job_finished(
        squad=job.squad,
        kind=kind.name,
        job_id=job.pk,
        status=status,
        url=kind.url(job),
        actor=job.created_by.get_username() if job.created_by_id else None,
        **summary,
    )
    seconds = (now - job.started_at).total_seconds() if job.started_at else 0.0
    transaction.on_commit(lambda: job_finished(kind.name, status, seconds))


# --- recovery ----------------------------------------------------------------------------------


def recover() -> dict[str, tuple[list[int], list[int]]]:
    """One pass over every registered kind: each running job whose heartbeat is older
    than the stale threshold is requeued (a worker is woken at commit), or failed with
    the reason once it has used its max attempts. {kind: (requeued ids, failed ids)}."""
    cutoff = timezone.now() - stale_after()
    out: dict[str, tuple[list[int], list[int]]] = {}
    for kind in KINDS.values():
        requeued: list[int] = []
        failed: list[int] = []
        stale = kind.model.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
        for job_id in stale.values_list("pk", flat=True):
            with transaction.atomic():
                job = (
                    kind.model.objects.select_for_update()
                    .filter(pk=job_id, status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
                    .first()
                )
                if job is None:
                    continue
                if job.attempts >= job.max_attempts:
                    for name, value in kind.lost_fields.items():
                        setattr(job, name, value)
                    _close(kind, job, JobStatus.FAILED, _gave_up(job), list(kind.lost_fields))
                    failed.append(job_id)
                else:
                    _requeue(kind, job)
                    requeued.append(job_id)
        if requeued or failed:
            out[kind.name] = (requeued, failed)
    return out


def _requeue(kind: JobKind, job: Job) -> None:
    """Queue a running job again (its claim void) and wake a worker at commit. Call with
    the row locked."""
    job.status, job.lease_token = JobStatus.QUEUED, ""
    job.save(update_fields=["status", "lease_token"])
    transaction.on_commit(lambda: _send(kind, job.pk))


def _gave_up(job: Job) -> str:
    return (
        f"worker_lost: the worker running this job stopped {job.attempts} times "
        f"(max attempts {job.max_attempts}; last: {job.worker}, last heartbeat "
        f"{job.heartbeat_at:%Y-%m-%d %H:%M:%S})."
    )
