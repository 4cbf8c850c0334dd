"""Feedback from production callers on generations, and drift alerts.

Feedback — one signal per row: a thumbs up/down, a score on the caller's scale (stored
raw and normalised to 0..1), or the user's edit of the output (Levenshtein distance and
normalised similarity). `value` is the row's signal on one 0..1 scale (thumbs 1/0, the
normalised score, the edit's similarity): the dashboard's feedback score and the drift
check read it.

AlertRule — a squad's drift settings (one row, created on first edit; defaults when
absent). Alert — a version's approval rate or mean feedback score fell more than the
threshold below its baseline (apps.feedback.drift states the rule).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone

User = settings.AUTH_USER_MODEL


class Feedback(models.Model):
    class Kind(models.TextChoices):
        THUMBS = "thumbs"
        SCORE = "score"
        EDIT = "edit"

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="+")
    generation = models.ForeignKey(
        "generation.Generation", on_delete=models.CASCADE, related_name="feedback"
    )
    # The generation's version, copied so the dashboard and the drift check read one index.
    prompt_version = models.ForeignKey(
        "prompts.PromptVersion", on_delete=models.CASCADE, related_name="+"
    )
    kind = models.CharField(max_length=6, choices=Kind.choices)
    thumbs = models.SmallIntegerField(null=True, blank=True, help_text="+1 up, -1 down")
    score_raw = models.FloatField(null=True, blank=True)
    scale_min = models.FloatField(null=True, blank=True)
    scale_max = models.FloatField(null=True, blank=True)
    score = models.FloatField(null=True, blank=True, help_text="score_raw normalised to 0..1")
    edited_text = models.TextField(blank=True)
    edit_distance = models.PositiveIntegerField(null=True, blank=True)
    edit_similarity = models.FloatField(null=True, blank=True)
    value = models.FloatField(help_text="The signal on a 0..1 scale")
    comment = models.TextField(blank=True, max_length=5000)
    external_user_id = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(value__gte=0, value__lte=1), name="feedback_value_0_1"
            )
        ]
        indexes = [
            models.Index(fields=["prompt_version", "created_at"], name="feedback_version_time"),
            models.Index(fields=["prompt_version", "id"], name="feedback_version_id"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} feedback on generation {self.generation_id}"


class AlertRule(models.Model):
    """A squad's drift settings; apps.feedback.drift.DEFAULT_RULE when no row exists."""

    squad = models.OneToOneField("squads.Squad", on_delete=models.CASCADE, related_name="+")
    threshold = models.FloatField(default=0.15, help_text="Relative drop that raises an alert")
    window = models.PositiveIntegerField(default=100, help_text="Latest samples compared")
    baseline_size = models.PositiveIntegerField(default=100, help_text="First samples of a version")
    min_samples = models.PositiveIntegerField(default=50)
    enabled = models.BooleanField(default=True)
    updated_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Alert rule of squad {self.squad_id}"


class Alert(models.Model):
    class Metric(models.TextChoices):
        APPROVAL_RATE = "approval_rate", "Approval rate"
        FEEDBACK_SCORE = "feedback_score", "Feedback score"

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="+")
    prompt_version = models.ForeignKey(
        "prompts.PromptVersion", on_delete=models.CASCADE, related_name="+"
    )
    metric = models.CharField(max_length=14, choices=Metric.choices)
    baseline = models.FloatField()
    current = models.FloatField()
    drop = models.FloatField(help_text="Relative drop, (baseline - current) / baseline")
    baseline_samples = models.PositiveIntegerField()
    window_samples = models.PositiveIntegerField()
    # The rule in force, and the id of the newest sample in the window: the next alert on
    # this version and metric is judged on samples after it only.
    rule = models.JSONField(default=dict)
    last_sample_id = models.PositiveBigIntegerField()
    raised_at = models.DateTimeField(default=timezone.now)
    acknowledged_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, max_length=2000)

    class Meta:
        ordering = ["-raised_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["prompt_version", "metric"],
                condition=models.Q(acknowledged_at__isnull=True),
                name="alert_one_open_per_version_metric",
            )
        ]
        indexes = [
            models.Index(
                fields=["squad", "raised_at"],
                condition=models.Q(acknowledged_at__isnull=True),
                name="alert_open_by_squad",
            )
        ]

    def __str__(self) -> str:
        return f"{self.metric} alert on version {self.prompt_version_id}"

    @property
    def is_open(self) -> bool:
        return self.acknowledged_at is None
