"""Service keys (squad-owned credentials for applications) and the quotas that bound
what a squad and each of its keys may spend through the OpenAI-compatible gateway."""

import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone

NAME_MAX = 100


class ServiceKey(models.Model):
    """A squad's key for an application, not tied to a person. Only the sha256 of the
    secret is stored. Scope: `gateway` (POST /v1/chat/completions, GET /v1/models) and/or
    `prompt_fetch` (GET /api/v1/squads/<s>/prompts/<slug>); `targets` and `prompts` list
    the target names and prompt slugs it may name ("*" = every one of the squad)."""

    PREFIX = "sk-studio-"

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="service_keys")
    name = models.CharField(max_length=NAME_MAX)
    key_prefix = models.CharField(max_length=24, help_text="First characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    allow_gateway = models.BooleanField(default=True)
    allow_prompt_fetch = models.BooleanField(default=False)
    targets = models.JSONField(default=list, blank=True)
    prompts = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Rotation: the key this one replaced (which stays valid until its expires_at).
    rotated_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["squad", "created_at"], name="servicekey_squad_time")]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @staticmethod
    def hash_key(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class Quota(models.Model):
    """Limits for a whole squad (`service_key` empty) or for one key. Empty = no limit.
    Per minute: requests and tokens (prompt + completion). Budget: tokens and/or cost
    per UTC day or month."""

    class Period(models.TextChoices):
        DAY = "day"
        MONTH = "month"

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="quotas")
    service_key = models.OneToOneField(
        ServiceKey, null=True, blank=True, on_delete=models.CASCADE, related_name="quota"
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)
    budget_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    budget_cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    budget_period = models.CharField(max_length=5, choices=Period.choices, default=Period.DAY)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["squad"],
                condition=models.Q(service_key__isnull=True),
                name="quota_one_per_squad",
            )
        ]

    def __str__(self) -> str:
        return f"Quota of {self.service_key or self.squad}"


class CacheRule(models.Model):
    """Exact-match response caching for one model name of the squad (a target's name or
    `prompt/<slug>`): deterministic non-streaming calls (temperature 0 or a seed) with the
    same messages and parameters get the stored answer for `ttl_seconds`."""

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=110)
    ttl_seconds = models.PositiveIntegerField()
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model"]
        constraints = [
            models.UniqueConstraint(fields=["squad", "model"], name="cache_rule_unique_model")
        ]

    def __str__(self) -> str:
        return f"cache {self.model} for {self.ttl_seconds}s"
