from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.core.models import Job


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


class FineTuneJob(Job):
    """A LoRA fine-tune of a local target's base model on a dataset version, run on the gpu
    queue under apps.core.jobs' lifecycle. Progress is written by the worker at every step;
    the loss chart is drawn from `points`. A killed worker's job is resumed from its last
    checkpoint in `work_dir`."""

    dataset_version = models.ForeignKey(
        DatasetVersion, on_delete=models.PROTECT, related_name="finetune_jobs"
    )
    target = models.ForeignKey(
        "generation.ModelTarget", on_delete=models.PROTECT, related_name="finetune_jobs"
    )
    base_model = models.CharField(max_length=200)
    # workers.runtime.training.LoraSettings / TrainSettings as dicts (target_modules a list)
    lora = models.JSONField(default=dict)
    train = models.JSONField(default=dict)
    # Training processes: GPUs on a CUDA worker, processes on a CPU worker. Above 1 the
    # worker launches the run with accelerate (workers/runtime/distributed.py); fair share
    # charges wall seconds times devices.
    devices = models.PositiveSmallIntegerField(default=1)
    # live progress (the worker's last workers.runtime.training.Progress)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(null=True, blank=True)
    epoch = models.FloatField(default=0.0)
    loss = models.FloatField(null=True, blank=True)
    smoothed_loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(default=0.0)
    eta_seconds = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    # [[step, loss, smoothed_loss, eval_loss or null], ...] for the chart, thinned when long
    points = models.JSONField(default=list, blank=True)
    # The step each run started from: [0, 12] = started fresh, resumed at step 12.
    resumed_at_steps = models.JSONField(default=list, blank=True)
    # workers.runtime.training.TrainingError.kind, "worker_lost" or "internal" on failure
    failure_kind = models.CharField(max_length=20, blank=True)
    work_dir = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="finetune_status_heartbeat")
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(devices__gte=1), name="finetune_job_devices_min_1"
            )
        ]

    def __str__(self) -> str:
        return f"Fine-tune {self.pk} ({self.status})"


class Adapter(models.Model):
    """A trained LoRA adapter: the files under DATA_DIR/adapters/<squad>/<id>/ with their
    hash, the base model (and its hash) it applies to, and the job and dataset version it
    came from. Usable on a model target only once approved (APPROVE_ADAPTERS)."""

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="adapters")
    job = models.OneToOneField(FineTuneJob, on_delete=models.PROTECT, related_name="adapter")
    dataset_version = models.ForeignKey(
        DatasetVersion, on_delete=models.PROTECT, related_name="adapters"
    )
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    base_model = models.CharField(max_length=200)
    base_model_sha256 = models.CharField(max_length=64)
    lora_config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Adapter {self.pk} ({self.base_model})"

    @property
    def approved(self) -> bool:
        return self.approved_at is not None


class AdapterComparison(Job):
    """An adapter against its base model, run on the gpu queue under apps.core.jobs'
    lifecycle: loss and perplexity of both on the adapter's dataset version's eval split
    (answer tokens only, as in training), and both models' generations on the chosen
    inputs with the same seed and parameters. `inputs` and `params` are fixed when it is
    requested."""

    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="comparisons")
    # [{"source": "prompt" | "eval row <n>", "messages": [...], "reference": str}, ...]
    inputs = models.JSONField(default=list)
    # {"max_new_tokens", "temperature", "top_p", "seed"}: the same for both models
    params = models.JSONField(default=dict)
    base_loss = models.FloatField(null=True, blank=True)
    adapter_loss = models.FloatField(null=True, blank=True)
    base_ppl = models.FloatField(null=True, blank=True)
    adapter_ppl = models.FloatField(null=True, blank=True)
    eval_rows = models.PositiveIntegerField(default=0)
    eval_tokens = models.PositiveIntegerField(default=0)
    # [{"input", "source", "reference", "base", "adapter", "base_error", "adapter_error"}]
    outputs = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="comparison_status_heartbeat")
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk} of adapter {self.adapter_id} ({self.status})"

    @property
    def loss_delta(self) -> float | None:
        """Adapter minus base: negative when the adapter fits the eval rows better."""
        if self.base_loss is None or self.adapter_loss is None:
            return None
        return self.adapter_loss - self.base_loss

    @property
    def ppl_delta(self) -> float | None:
        if self.base_ppl is None or self.adapter_ppl is None:
            return None
        return self.adapter_ppl - self.base_ppl
