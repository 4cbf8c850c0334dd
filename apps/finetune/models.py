from django.conf import settings
from django.db import models
from django.utils import timezone


class DatasetFormat(models.TextChoices):
    CHAT = "chat", "Chat (messages with roles)"
    PROMPT_COMPLETION = "prompt_completion", "Prompt / completion"
    VARIABLES = "variables", "Variables + output of a prompt version"


class Dataset(models.Model):
    """A squad's named training set; its content lives in immutable DatasetVersions."""

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="datasets")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    format = models.CharField(max_length=20, choices=DatasetFormat.choices)
    # Variables datasets only: the version whose input schema the rows' variables follow.
    prompt_version = models.ForeignKey(
        "prompts.PromptVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="datasets",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    latest_version = models.ForeignKey(
        "DatasetVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(fields=["squad", "slug"], name="dataset_slug_unique_in_squad"),
            models.CheckConstraint(
                condition=models.Q(format="variables", prompt_version__isnull=False)
                | (~models.Q(format="variables") & models.Q(prompt_version__isnull=True)),
                name="dataset_prompt_version_iff_variables",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.squad_id}/{self.slug}"


class DatasetVersion(models.Model):
    """Immutable rows of a dataset: a JSONL file under DATA_DIR/datasets with its sha256,
    counts, token statistics, a seeded train/eval split (stored per row as "split") and
    where the rows came from."""

    class Source(models.TextChoices):
        UPLOAD = "upload"
        REVIEW_EXPORT = "review_export"
        BATCH_JOB = "batch_job"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    source = models.CharField(max_length=16, choices=Source.choices)
    # upload: {"filename"}; review_export: {"export", "queue", "items", "annotators", ...};
    # batch_job: {"batch_job", "prompt_version", "generations"}
    source_ref = models.JSONField(default=dict)
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    row_count = models.PositiveIntegerField()
    train_count = models.PositiveIntegerField()
    eval_count = models.PositiveIntegerField()
    split_seed = models.BigIntegerField()
    eval_fraction = models.FloatField()
    # {"counter", "target", "context_length", "min", "mean", "p95", "max", "total"}
    token_stats = models.JSONField(default=dict)
    commit_message = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["dataset", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "number"], name="dataset_version_number_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.dataset.slug} v{self.number}"
