"""Registry rows for tests that need a second ready base model without a worker."""

import hashlib

from apps.basemodels.models import BaseModel, BaseModelVersion


def ready_model(name: str, **facts) -> BaseModelVersion:
    """A ready registration of `name` (a new version when it exists) with a manifest of
    its own."""
    model, _ = BaseModel.objects.get_or_create(name=name)
    number = model.versions.count() + 1
    manifest = {"model.safetensors": hashlib.sha256(f"{name}/{number}".encode()).hexdigest()}
    values = {
        "source_kind": "folder",
        "source": name,
        "status": "ready",
        "architecture": "Qwen2ForCausalLM",
        "model_type": "qwen2",
        "parameters": 1_000_000,
        "context_length": 4096,
        "dtype": "float32",
        "hidden_size": 64,
        "num_layers": 2,
        "vocab_size": 1000,
        "manifest": manifest,
        "manifest_sha256": hashlib.sha256(repr(manifest).encode()).hexdigest(),
        **facts,
    }
    version = BaseModelVersion.objects.create(model=model, number=number, **values)
    model.current = version
    model.save(update_fields=["current"])
    return version
