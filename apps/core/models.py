"""What every long job has (`Job`, the rows apps.core.jobs works on) and the staff-set
share of GPU workers per squad (`GpuShare`, read by apps.core.fairshare)."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def default_max_attempts() -> int:
    return settings.STUDIO_JOB_MAX_ATTEMPTS


class Job(models.Model):
    """A long job run by a worker under a lease (apps.core.jobs): `worker` and
    `lease_token` name the holder of the current claim, `heartbeat_at` its last sign of
    life; a claim whose heartbeat is older than the stale threshold is recovered.
    Only the holder of the current `lease_token` may write progress or finish."""

    Status = JobStatus

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    lease_token = models.CharField(max_length=32, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=default_max_attempts)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class GpuShare(models.Model):
    """A squad's weight in the fair share of GPU workers (default 1: equal) and its limit
    on GPU jobs running at once (empty: STUDIO_GPU_MAX_RUNNING_PER_SQUAD). Set by staff
    through `apps.core.services.gpu_share_set`."""

    squad = models.OneToOneField("squads.Squad", on_delete=models.CASCADE, related_name="+")
    share = models.PositiveIntegerField(default=1)
    max_running = models.PositiveIntegerField(null=True, blank=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(share__gte=1), name="share_min_1")]

    def __str__(self) -> str:
        return f"GPU share of squad {self.squad_id}: {self.share}"
