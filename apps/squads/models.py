import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.squads.permissions import MODEL_PERMISSIONS, Role

SLUG_MAX = 50
NAME_MAX = 100


def default_protected_labels() -> list[str]:
    return ["production"]


class Squad(models.Model):
    """A workspace: members with roles, and everything the squad owns."""

    name = models.CharField(max_length=NAME_MAX)
    slug = models.SlugField(max_length=SLUG_MAX, unique=True)
    description = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Label names that only a gated move may point elsewhere (see prompts.services.label_move).
    protected_labels = models.JSONField(default=default_protected_labels)

    class Meta:
        ordering = ["name"]
        default_permissions = ()
        permissions = MODEL_PERMISSIONS

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's place in a squad. `roles` mirrors the role groups the user is in."""

    squad = models.ForeignKey(Squad, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    roles = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["squad", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["squad", "user"], name="membership_unique_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.squad}"

    @property
    def role_labels(self) -> list[str]:
        return [Role(r).label for r in self.roles]

    def has_role(self, role: Role | str) -> bool:
        return Role(role).value in self.roles


class ApiToken(models.Model):
    """A personal API token. Only the sha256 of the secret is stored."""

    PREFIX = "stu_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=NAME_MAX)
    key_prefix = models.CharField(max_length=16, help_text="First characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

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
