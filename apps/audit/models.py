from django.conf import settings
from django.db import models
from django.utils import timezone

GENESIS_HASH = "0" * 64


class AuditEvent(models.Model):
    """One entry of the append-only, hash-chained audit log.

    `hash` = sha256(prev_hash + canonical JSON of the event); see apps.audit.chain.
    Actor and squad are kept without database constraints and with their names
    copied, so that deleting a user or a squad never rewrites history. On
    PostgreSQL a trigger rejects UPDATE and DELETE on this table.
    """

    sequence = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_label = models.CharField(max_length=150, blank=True)
    squad = models.ForeignKey(
        "squads.Squad",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["sequence"]
        default_permissions = ("view",)
        indexes = [
            models.Index(fields=["squad", "created_at"], name="audit_squad_time"),
            models.Index(fields=["actor", "created_at"], name="audit_actor_time"),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action}"


class ChainVerification(models.Model):
    """A verification of the whole chain, run on the default queue."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        INTACT = "intact"
        BROKEN = "broken"
        FAILED = "failed"

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    events_checked = models.BigIntegerField(default=0)
    first_broken_sequence = models.BigIntegerField(null=True, blank=True)
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Verification {self.pk} ({self.status})"
