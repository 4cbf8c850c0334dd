from django.conf import settings
from django.db import models
from django.utils import timezone

SLUG_MAX = 80
LABEL_MAX = 50


class PromptTemplate(models.Model):
    """A named prompt in a squad; its content lives in immutable PromptVersions."""

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="prompts")
    slug = models.SlugField(max_length=SLUG_MAX)
    description = models.TextField(blank=True, max_length=2000)
    tags = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    latest_version = models.ForeignKey(
        "PromptVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(fields=["squad", "slug"], name="prompt_slug_unique_in_squad")
        ]

    def __str__(self) -> str:
        return self.slug


class PromptVersion(models.Model):
    """One immutable version. Editing creates the next number; nothing here changes."""

    class OutputFormat(models.TextChoices):
        TEXT = "text"
        JSON = "json"

    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    messages = models.JSONField()
    input_schema = models.JSONField()
    output_schema = models.JSONField(null=True, blank=True)
    output_format = models.CharField(
        max_length=4, choices=OutputFormat.choices, default=OutputFormat.TEXT
    )
    model_settings = models.JSONField()
    fallback_target = models.CharField(max_length=100, blank=True)
    commit_message = models.CharField(max_length=500)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    created_at = models.DateTimeField(default=timezone.now)
    content_hash = models.CharField(max_length=64, db_index=True)
    warnings = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["template", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="prompt_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.template.slug} v{self.number}"

    def content(self) -> dict:
        """The fields the content hash covers."""
        return {
            "messages": self.messages,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "output_format": self.output_format,
            "model_settings": self.model_settings,
            "fallback_target": self.fallback_target,
        }


class Label(models.Model):
    """A named pointer (production, staging, …) to one version of a template."""

    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="labels")
    name = models.SlugField(max_length=LABEL_MAX)
    version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="labels")
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["template", "name"], name="label_unique_in_template")
        ]

    def __str__(self) -> str:
        return f"{self.template.slug}@{self.name}"


class LabelMove(models.Model):
    """History of a label: who pointed it from which version to which, and when."""

    label = models.ForeignKey(Label, on_delete=models.CASCADE, related_name="moves")
    from_version = models.ForeignKey(
        PromptVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    to_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=500, blank=True)
    moved_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-moved_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.label} → {self.to_version_id}"
