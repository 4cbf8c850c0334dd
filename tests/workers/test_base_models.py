"""Bring your own base model: two tiny random models of different architectures (a
Llama-like and a Qwen2-like config, built here and saved in Hugging Face layout under
STUDIO_MODELS_DIR) go through registration on the worker side, a real LoRA fine-tune of
a few steps, approval, attachment to a squad's target and generation; the refusals of
registration and of a model whose files changed after it."""

import json
import shutil
import threading
from pathlib import Path

import pytest

from apps.audit.models import AuditEvent
from apps.basemodels import services
from apps.basemodels.models import BaseModelVersion
from apps.core.exceptions import PermissionDenied, ValidationFailed
from apps.finetune import jobs
from apps.finetune.models import Adapter
from apps.generation import services as generation
from apps.generation.models import Generation, ModelTarget
from tests.factories import UserFactory
from tests.finetune.conftest import chat, jsonl, make_dataset, upload
from tests.generation.conftest import text_prompt


def save_tiny(
    store: Path, name: str, architecture: str, tokenizer, *, hidden_size: int = 32
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
    }
    torch.manual_seed(0)
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    folder = store / name
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def staff():
    return UserFactory(username="staffer", is_staff=True)


def register(name: str, source: str, **kwargs) -> BaseModelVersion:
    version = services.base_model_register(
        actor=staff() if not kwargs.get("actor") else kwargs.pop("actor"),
        name=name,
        source_kind=kwargs.pop("source_kind", "folder"),
        source=source,
        **kwargs,
    )
    return services.base_model_registration_run(version_id=version.pk)


@pytest.mark.django_db(transaction=True)
def test_two_architectures_register_train_attach_and_generate(squad, store, smollm2_tokenizer):
    save_tiny(store, "tiny-llama", "llama", smollm2_tokenizer)
    save_tiny(store, "tiny-qwen", "qwen2", smollm2_tokenizer)
    llama = register("tiny-llama", "tiny-llama", licence="MIT", notes="test model")
    qwen = register("tiny-qwen", "tiny-qwen")
    assert (llama.status, qwen.status) == ("ready", "ready"), (llama.refusal, qwen.refusal)
    assert (llama.architecture, qwen.architecture) == ("LlamaForCausalLM", "Qwen2ForCausalLM")
    assert llama.context_length == 256 and llama.dtype == "float32"
    assert llama.parameters > 0 and llama.chat_template_source == "tokenizer"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(llama.manifest)
    assert llama.manifest_sha256 != qwen.manifest_sha256
    assert AuditEvent.objects.filter(action="basemodels.registered").count() == 2

    owner = UserFactory(username="owner")
    engineer = UserFactory(username="engineer")
    compliance = UserFactory(username="compliance")
    targets, adapters = {}, {}
    dataset = make_dataset(squad)
    version = upload(dataset, jsonl(*[chat(f"q {i}", f"a {i}") for i in range(6)]))
    for name in ("tiny-llama", "tiny-qwen"):
        targets[name] = generation.model_target_create(
            actor=owner, squad=squad, name=name, kind="local", base_model=name
        )
        job = jobs.finetune_job_create(
            actor=engineer,
            dataset_version=version,
            target_name=name,
            train={"max_steps": 2, "batch_size": 2, "max_seq_len": 128},
        )
        job = jobs.finetune_job_run(job_id=job.pk)
        assert job.status == "succeeded", job.error
        adapter = Adapter.objects.get(job=job)
        registered = BaseModelVersion.objects.get(model__name=name, status="ready")
        assert adapter.base_model_sha256 == registered.manifest_sha256
        adapters[name] = jobs.adapter_approve(actor=compliance, adapter=adapter)

    # by hash: the llama adapter cannot go on the qwen target, nor the other way round
    with pytest.raises(ValidationFailed, match="only goes on the base model it was trained on"):
        jobs.model_target_set_adapter(
            actor=owner, target=targets["tiny-qwen"], adapter=adapters["tiny-llama"]
        )
    with pytest.raises(ValidationFailed, match="only goes on the base model it was trained on"):
        jobs.model_target_set_adapter(
            actor=owner, target=targets["tiny-llama"], adapter=adapters["tiny-qwen"]
        )
    # one local server process serving both registered models and their adapters
    import httpx
    from django.conf import settings

    from workers.runtime.local import load_local_model
    from workers.server.app import InferenceHTTPServer, InferenceService

    services_ = [
        InferenceService(
            load_local_model(name, BaseModelVersion.objects.get(model__name=name).manifest_sha256),
            name,
            Path(settings.DATA_DIR) / "finetune",
        )
        for name in ("tiny-llama", "tiny-qwen")
    ]
    for each in services_:
        each.start()
    server = InferenceHTTPServer(("127.0.0.1", 0), services_)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    settings.STUDIO_LOCAL_SERVER_URL = url
    try:
        listed = httpx.get(f"{url}/v1/models").json()["data"]
        parents = {m["id"]: m.get("parent") for m in listed}
        assert parents["tiny-llama"] is None and parents["tiny-qwen"] is None
        for name in ("tiny-llama", "tiny-qwen"):
            adapter_id = str(Path(adapters[name].path).relative_to(settings.DATA_DIR / "finetune"))
            assert parents[adapter_id] == name
        generate_on_both(squad, owner, engineer, targets, adapters)
    finally:
        server.shutdown()
        server.server_close()
        for each in services_:
            each.engine.stop()


def generate_on_both(squad, owner, engineer, targets, adapters) -> None:
    for name in ("tiny-llama", "tiny-qwen"):
        jobs.model_target_set_adapter(actor=owner, target=targets[name], adapter=adapters[name])
        prompt = text_prompt(squad, target=name, slug=f"p-{name}")
        row = generation.generation_request(
            actor=engineer,
            version=prompt,
            variables={"topic": "x"},
            source=Generation.Source.PLAYGROUND,
        )
        row = generation.generation_run(generation_id=row.pk)
        assert row.status == "ok", row.errors
        assert row.output_tokens > 0
        assert row.target_used == name


@pytest.mark.django_db
def test_registration_refusals(store, smollm2_tokenizer):
    folder = save_tiny(store, "good", "llama", smollm2_tokenizer)

    def variant(name: str) -> Path:
        shutil.copytree(folder, store / name)
        return store / name

    for file in variant("no-tokenizer").glob("tokenizer*"):
        file.unlink()
    config = variant("unknown-arch") / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "mamba9"}))
    tokenizer_config = variant("no-template") / "tokenizer_config.json"
    data = json.loads(tokenizer_config.read_text())
    data.pop("chat_template", None)
    tokenizer_config.write_text(json.dumps(data))
    (store / "no-template" / "chat_template.jinja").unlink(missing_ok=True)
    weights = variant("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    real = services_sha(folder / "model.safetensors")

    cases = {
        "no-tokenizer": ("missing_files", "has no tokenizer"),
        "unknown-arch": ("unknown_architecture", "unknown architecture 'mamba9'"),
        "no-template": ("no_chat_template", "no chat template"),
        "truncated": ("corrupt", "truncated or damaged"),
        "missing": ("not_found", "does not exist"),
    }
    for name, (reason, message) in cases.items():
        version = register(name, name)
        assert version.status == "refused", name
        assert version.refusal_reason == reason, (name, version.refusal)
        assert message in version.refusal, (name, version.refusal)
    # hash mismatch against a checksum the registrant gives
    bad = register("good", "good", expected_sha256={"model.safetensors": "0" * 64})
    assert (bad.status, bad.refusal_reason) == ("refused", "corrupt")
    assert f"its sha256 is {real}, expected {'0' * 64}" in bad.refusal
    # a chat template given at registration makes the template-less model servable
    given = register("no-template", "no-template", chat_template="{{ messages }}")
    assert (given.status, given.chat_template_source) == ("ready", "given")
    assert AuditEvent.objects.filter(action="basemodels.registration_refused").count() == 6
    # only staff register; the web side refuses paths leaving the store
    with pytest.raises(PermissionDenied):
        services.base_model_register(
            actor=UserFactory(username="owner"), name="x", source_kind="folder", source="good"
        )
    for source in ("../etc", "/abs/path", "a/../../b", "a\x00b"):
        with pytest.raises(ValidationFailed):
            services.base_model_register(
                actor=staff(), name="y", source_kind="folder", source=source
            )


def services_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.django_db(transaction=True)
def test_a_weight_changed_after_registration_is_refused_at_load_and_audited(
    squad, store, smollm2_tokenizer
):
    folder = save_tiny(store, "tiny-llama", "llama", smollm2_tokenizer)
    version = register("tiny-llama", "tiny-llama")
    assert version.status == "ready"
    owner = UserFactory(username="owner")
    generation.model_target_create(
        actor=owner, squad=squad, name="mine", kind="local", base_model="tiny-llama"
    )
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    prompt = text_prompt(squad, target="mine", slug="changed")
    row = generation.generation_request(
        actor=UserFactory(username="engineer"),
        version=prompt,
        variables={"topic": "x"},
        source=Generation.Source.PLAYGROUND,
    )
    row = generation.generation_run(generation_id=row.pk)
    assert row.status == "failed"
    assert "model.safetensors has sha256" in row.errors[0]["message"]
    version.refresh_from_db()
    assert version.status == "changed"
    event = AuditEvent.objects.get(action="basemodels.files_changed")
    assert event.data["name"] == "tiny-llama"
    # refused until registered again; then it is ready and used
    with pytest.raises(ValidationFailed, match="is changed"):
        generation.model_target_create(
            actor=owner, squad=squad, name="again", kind="local", base_model="tiny-llama"
        )
    again = register("tiny-llama", "tiny-llama")
    assert (again.status, again.number) == ("ready", 2)
    assert ModelTarget.objects.filter(name="mine").exists()


@pytest.mark.django_db
def test_a_hub_id_registers_from_the_local_cache_offline(store, smollm2_tokenizer, monkeypatch):
    """A hub cache laid out as huggingface_hub writes it (blobs named by sha256, snapshot
    symlinks); the hub is never asked. A blob whose content differs from its name is
    refused as corrupt."""
    import hashlib

    from huggingface_hub import constants

    folder = save_tiny(store, "src", "qwen2", smollm2_tokenizer)
    cache = store.parent / "hf-cache"
    repo = cache / "models--acme--tiny-qwen"
    snapshot = repo / "snapshots" / ("c" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    for file in folder.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("../../blobs") / digest)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    version = register("tiny-qwen-hub", "acme/tiny-qwen", source_kind="hub")
    assert version.status == "ready", version.refusal
    assert version.architecture == "Qwen2ForCausalLM"
    missing = register("absent", "acme/absent", source_kind="hub")
    assert (missing.status, missing.refusal_reason) == ("refused", "not_found")
    # a damaged blob no longer matches the sha256 it is named by
    weights = (snapshot / "model.safetensors").resolve()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    damaged = register("tiny-qwen-hub", "acme/tiny-qwen", source_kind="hub")
    assert (damaged.status, damaged.refusal_reason) == ("refused", "corrupt")
    assert "model.safetensors is corrupt" in damaged.refusal


@pytest.mark.django_db
def test_registering_again_while_a_registration_waits_keeps_the_newest_current(
    store, smollm2_tokenizer
):
    save_tiny(store, "tiny-llama", "llama", smollm2_tokenizer)
    stuck = services.base_model_register(
        actor=staff(), name="tiny-llama", source_kind="folder", source="tiny-llama"
    )  # its worker died: never run
    newer = register("tiny-llama", "tiny-llama")
    assert (newer.status, newer.number) == ("ready", 2)
    late = services.base_model_registration_run(version_id=stuck.pk)
    assert late.status == "ready"
    newer.model.refresh_from_db()
    assert newer.model.current_id == newer.pk
