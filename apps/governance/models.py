from django.conf import settings
from django.db import models
from django.utils import timezone


class PolicyVersion(models.Model):
    """One immutable version of a squad's governance rules; the highest number is in
    force. Generations point at the version they were checked under."""

    squad = models.ForeignKey(
        "squads.Squad", on_delete=models.CASCADE, related_name="policy_versions"
    )
    number = models.PositiveIntegerField()
    rules = models.JSONField()
    note = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["squad", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["squad", "number"], name="policy_version_unique")
        ]

    def __str__(self) -> str:
        return f"Governance policy v{self.number} of {self.squad}"
