"""Fair share of a queue's workers between squads.

When a worker is free it takes the oldest queued job of the squad with the least GPU time
in the recent window (STUDIO_FAIR_SHARE_WINDOW_HOURS) divided by its share (GpuShare,
default 1), among squads running fewer jobs than their limit. So one squad's hundred
queued jobs do not starve another squad's one: the second squad has used less, and goes
next. GPU time is counted in device-seconds: each job's wall time since it started,
running jobs included, clipped to the window, times the devices it holds (a kind's
`devices_field`, e.g. a fine-tune on 2 GPUs charges twice its seconds; one otherwise);
ties go to the oldest job.

`queue_position(job)` answers the same question for a waiting job: where it stands if
the queue ran as it is now (each pick charged the window's mean job time), and why it
waits.
"""

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from heapq import heapify, heappop, heappush
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from apps.core.models import GpuShare, Job, JobStatus

FALLBACK_JOB_SECONDS = 60.0


@dataclass
class _Squad:
    used: float = 0.0  # device-seconds in the window
    share: int = 1
    limit: int = 0  # 0: no limit
    running: int = 0

    @property
    def load(self) -> float:
        return self.used / self.share

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.running >= self.limit


@dataclass(frozen=True)
class Waiting:
    kind: Any  # apps.core.jobs.JobKind
    pk: int
    squad_id: int
    created_at: datetime


@dataclass(frozen=True)
class Position:
    """Where a queued job stands: 1 is next; `reason` says why it waits, for a person."""

    position: int
    queued: int
    reason: str


def _state(queue: str) -> tuple[dict[int, _Squad], list[Waiting], float]:
    """Per squad: device-seconds in the window, share, limit, running jobs; the queued
    jobs oldest first; the mean device-seconds of a job in the window."""
    from apps.core.jobs import kinds_on

    now = timezone.now()
    since = now - timedelta(hours=settings.STUDIO_FAIR_SHARE_WINDOW_HOURS)
    squads: dict[int, _Squad] = {}
    waiting: list[Waiting] = []
    spans: list[float] = []
    for kind in kinds_on(queue):
        jobs = kind.model.objects
        for row in jobs.filter(status=JobStatus.QUEUED).values("pk", "squad_id", "created_at"):
            waiting.append(Waiting(kind, row["pk"], row["squad_id"], row["created_at"]))
            squads.setdefault(row["squad_id"], _Squad())
        recent = jobs.filter(started_at__isnull=False).filter(
            Q(finished_at__isnull=True) | Q(finished_at__gte=since)
        )
        columns = ["squad_id", "started_at", "finished_at"]
        if kind.devices_field:
            columns.append(kind.devices_field)
        for squad_id, started, finished, *held in recent.values_list(*columns):
            devices = max(held[0] or 1, 1) if held else 1
            seconds = ((finished or now) - max(started, since)).total_seconds()
            squads.setdefault(squad_id, _Squad()).used += max(seconds, 0.0) * devices
            if finished is not None:
                spans.append((finished - started).total_seconds() * devices)
        running = jobs.filter(status=JobStatus.RUNNING).values("squad_id").annotate(n=Count("pk"))
        for row in running:
            squads.setdefault(row["squad_id"], _Squad()).running += row["n"]
    default_limit = settings.STUDIO_GPU_MAX_RUNNING_PER_SQUAD
    for squad in squads.values():
        squad.limit = default_limit
    for share in GpuShare.objects.filter(squad_id__in=list(squads)):
        squad = squads[share.squad_id]
        squad.share = share.share
        if share.max_running is not None:
            squad.limit = share.max_running
    waiting.sort(key=lambda w: (w.created_at, w.pk))
    mean = sum(spans) / len(spans) if spans else FALLBACK_JOB_SECONDS
    return squads, waiting, max(mean, 1.0)


def _pick(squads: dict[int, _Squad], waiting: list[Waiting], *, limits: bool) -> Waiting | None:
    """The next job: oldest of the squad with the least used/share (ties: oldest job)."""
    best: Waiting | None = None
    seen: set[int] = set()
    for job in waiting:  # oldest first, so each squad's first is its FIFO head
        if job.squad_id in seen:
            continue
        seen.add(job.squad_id)
        squad = squads[job.squad_id]
        if limits and squad.full:
            continue
        if best is None or squad.load < squads[best.squad_id].load:
            best = job
    return best


def next_job(queue: str) -> tuple[Any, int] | None:
    """(kind, job id) of the job a free worker of `queue` should claim now, or None."""
    squads, waiting, _ = _state(queue)
    picked = _pick(squads, waiting, limits=True)
    return (picked.kind, picked.pk) if picked is not None else None


def queue_position(job: Job) -> Position | None:
    """Where a queued job stands in its queue and why it waits; None unless queued."""
    return QueuePositions().of(job)


# (job model, pk) -> (place from 0, earlier queued jobs of its own squad)
_Places = dict[tuple[type, int], tuple[int, int]]


class QueuePositions:
    """Positions of many jobs from one reading of each queue: a list of jobs costs one
    simulation per queue, not one per job. The simulation runs the queue as it is now,
    each pick charging the window's mean job time to its squad (a heap of squads keyed
    like `_pick`: least used/share, ties to the oldest head), so n queued jobs cost
    O(n log squads)."""

    def __init__(self) -> None:
        self._queues: dict[str, tuple[dict[int, _Squad], _Places]] = {}

    def _read(self, queue: str) -> tuple[dict[int, _Squad], _Places]:
        """Per squad its state; per queued job (model, pk) -> (place from 0, earlier jobs
        of its own squad)."""
        if queue not in self._queues:
            squads, waiting, mean = _state(queue)
            lines: dict[int, deque[Waiting]] = {}
            for w in waiting:
                lines.setdefault(w.squad_id, deque()).append(w)
            load = {sid: squads[sid].load for sid in lines}
            heap = [(load[sid], q[0].created_at, q[0].pk, sid) for sid, q in lines.items()]
            heapify(heap)
            picks: dict[int, int] = {}
            index: _Places = {}
            while heap:
                sid = heappop(heap)[3]
                picked = lines[sid].popleft()
                index[(picked.kind.model, picked.pk)] = (len(index), picks.get(sid, 0))
                picks[sid] = picks.get(sid, 0) + 1
                load[sid] += mean / squads[sid].share
                if lines[sid]:
                    head = lines[sid][0]
                    heappush(heap, (load[sid], head.created_at, head.pk, sid))
            self._queues[queue] = (squads, index)
        return self._queues[queue]

    def of(self, job: Job) -> Position | None:
        from apps.core.jobs import kind_of

        if job.status != JobStatus.QUEUED:
            return None
        squads, index = self._read(kind_of(job).queue)
        place = index.get((type(job), job.pk))
        if place is None:  # claimed meanwhile
            return None
        mine, own = place
        reason = _reason(squads[job.squad_id], mine, own)
        return Position(position=mine + 1, queued=len(index), reason=reason)


def _reason(squad: _Squad, ahead: int, own: int) -> str:
    if squad.full:
        reason = (
            f"Your squad runs {squad.running} GPU job(s), its limit at once; this one starts "
            "when one of them finishes"
        )
        if own:
            reason += f", after {own} earlier job(s) of your squad"
        return reason + "."
    if not ahead:
        return "Next in line: it starts when a GPU worker is free."
    others = ahead - own
    parts = []
    if own:
        parts.append(f"{own} earlier job(s) of your squad (first come, first served)")
    if others:
        parts.append(
            f"{others} job(s) of squads that used less GPU time for their share in the "
            f"last {settings.STUDIO_FAIR_SHARE_WINDOW_HOURS:g} h"
        )
    return f"Waiting for {' and '.join(parts)}."


def queue_out(job: Job, positions: QueuePositions | None = None) -> dict[str, Any] | None:
    """The API's `queue` field of a job: position, queued and reason, or None unless the
    job is queued. A list passes one QueuePositions so the queue is read once."""
    found = (positions or QueuePositions()).of(job)
    if found is None:
        return None
    return {"position": found.position, "queued": found.queued, "reason": found.reason}
