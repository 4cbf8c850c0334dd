from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.core.models import Job

NAME_MAX = 100


class ModelTarget(models.Model):
    """A named place to run a prompt: a local base model on the workers, or a remote
    OpenAI-compatible server. Global when `squad` is empty; a squad's own target of the
    same name wins over a global one."""

    class Kind(models.TextChoices):
        LOCAL = "local"
        REMOTE = "remote"

    squad = models.ForeignKey(
        "squads.Squad", null=True, blank=True, on_delete=models.CASCADE, related_name="targets"
    )
    name = models.SlugField(max_length=NAME_MAX)
    kind = models.CharField(max_length=6, choices=Kind.choices)
    description = models.CharField(max_length=500, blank=True)
    # local
    base_model = models.CharField(
        max_length=200, blank=True, help_text="Local model id, e.g. smollm2-135m-instruct"
    )
    # remote
    base_url = models.URLField(max_length=500, blank=True)
    remote_model = models.CharField(max_length=200, blank=True)
    token_env = models.CharField(
        max_length=100, blank=True, help_text="NAME of the environment variable with the token"
    )
    adapter_id = models.CharField(max_length=200, blank=True, help_text="TGI multi-LoRA adapter")
    # local: a trained, approved LoRA adapter loaded on top of base_model (set only through
    # apps.finetune.jobs.model_target_set_adapter). Not `adapter`: its column would clash
    # with adapter_id above.
    lora_adapter = models.ForeignKey(
        "finetune.Adapter", null=True, blank=True, on_delete=models.PROTECT, related_name="targets"
    )
    # both
    default_params = models.JSONField(default=dict, blank=True)
    context_length = models.PositiveIntegerField(default=8192)
    price_input_per_1k = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    price_output_per_1k = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["squad", "name"], name="target_name_unique_in_squad"),
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(squad__isnull=True),
                name="target_name_unique_global",
            ),
        ]

    def __str__(self) -> str:
        return self.name if self.squad_id is None else f"{self.name} ({self.squad})"


class BatchJob(Job):
    """A prompt version run over a table of variables on the gpu queue, one Generation per
    row; its lifecycle (claim, lease, cancel, finish, recovery) is apps.core.jobs'."""

    prompt_version = models.ForeignKey(
        "prompts.PromptVersion", on_delete=models.PROTECT, related_name="batch_jobs"
    )
    target = models.ForeignKey(ModelTarget, on_delete=models.PROTECT, related_name="batch_jobs")
    source_name = models.CharField(max_length=255, blank=True)
    rows_path = models.CharField(max_length=500)
    rows_sha256 = models.CharField(max_length=64)
    rows_total = models.PositiveIntegerField()
    rows_done = models.PositiveIntegerField(default=0)
    # 32 rows per forward pass: on a CPU, decoding is bound by reading the weights, so
    # larger batches amortise them (bench/batch_generation.py: 4.5x one-by-one at 32).
    batch_size = models.PositiveIntegerField(default=32)
    output_tokens = models.PositiveBigIntegerField(default=0)
    generation_seconds = models.FloatField(default=0.0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="batch_status_heartbeat")]

    def __str__(self) -> str:
        return f"Batch {self.pk} ({self.status})"

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.generation_seconds if self.generation_seconds else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.rows_done or self.finished or not self.started_at:
            return None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        return elapsed / self.rows_done * (self.rows_total - self.rows_done)


class Generation(models.Model):
    """One model call for one set of variables, with everything needed to trust it later."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        OK = "ok"
        INVALID = "invalid"
        FAILED = "failed"
        BLOCKED = "blocked"
        # A gateway stream whose client went away before the end (apps.gateway).
        CANCELLED = "cancelled"

    class Source(models.TextChoices):
        PLAYGROUND = "playground"
        BATCH = "batch"
        API = "api"
        EVAL = "eval"
        GATEWAY = "gateway"

    squad = models.ForeignKey("squads.Squad", on_delete=models.CASCADE, related_name="generations")
    # Empty for a gateway call that names a model target: the caller's messages, no prompt.
    prompt_version = models.ForeignKey(
        "prompts.PromptVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="generations",
    )
    target = models.ForeignKey(ModelTarget, on_delete=models.PROTECT, related_name="generations")
    target_used = models.CharField(
        max_length=NAME_MAX, blank=True, help_text="The target that produced the output"
    )
    adapter = models.CharField(max_length=200, blank=True)
    variables = models.JSONField()
    rendered_hash = models.CharField(max_length=64, blank=True)
    output_text = models.TextField(blank=True)
    output_json = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    errors = models.JSONField(default=list, blank=True)
    attempts = models.JSONField(default=list, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    source = models.CharField(max_length=10, choices=Source.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    batch_job = models.ForeignKey(
        BatchJob, null=True, blank=True, on_delete=models.CASCADE, related_name="generations"
    )
    row_index = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Governance (apps.governance): what the policy found before and after the call, the
    # policy version it ran under (null: the default rules), and the signed manifest.
    findings = models.JSONField(default=list, blank=True)
    policy_version = models.ForeignKey(
        "governance.PolicyVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="generations",
    )
    provenance = models.JSONField(null=True, blank=True)
    provenance_signature = models.CharField(max_length=64, blank=True)
    provenance_key_id = models.CharField(max_length=50, blank=True)
    # The caller's business context (X-Studio-Context header, apps.telemetry.context) for
    # playground and API calls: {"use_case": "contract_review", ...}.
    context = models.JSONField(default=dict, blank=True)
    # Gateway calls: the service key, and the caller's OpenAI `user` and `metadata`.
    service_key = models.ForeignKey(
        "gateway.ServiceKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="generations",
    )
    end_user = models.CharField(max_length=256, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # A prompt model's caller messages, appended after the rendered ones (redacted).
    request_messages = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Idempotent batch rows: a resumed job can never write a row twice.
            models.UniqueConstraint(
                fields=["batch_job", "row_index"], name="generation_one_per_batch_row"
            )
        ]
        indexes = [
            models.Index(fields=["squad", "created_at"], name="generation_squad_time"),
            models.Index(fields=["batch_job", "status"], name="generation_batch_status"),
        ]

    def __str__(self) -> str:
        return f"Generation {self.pk} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status not in (self.Status.QUEUED, self.Status.RUNNING)
