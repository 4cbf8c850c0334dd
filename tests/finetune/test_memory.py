"""Memory-aware planning in the pre-flight and at job creation; QLoRA refused on CPU."""

import pytest

from apps.basemodels import memory
from apps.core.exceptions import ValidationFailed
from apps.finetune import jobs, preflight
from apps.finetune.models import FineTuneJob
from tests.basemodels.factories import ready_model
from tests.factories import UserFactory
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload


@pytest.fixture
def version(squad, monkeypatch):
    fake_training.install(monkeypatch, fake_training.Script())
    dataset = make_dataset(squad)
    return upload(dataset, jsonl(*[chat(f"q {i}", f"a {i}") for i in range(8)]))


def big_model():
    # a 7B-like shape: 32 layers, hidden 4096, vocabulary 32,000
    return ready_model(
        "big-7b",
        parameters=7_000_000_000,
        hidden_size=4096,
        num_layers=32,
        vocab_size=32000,
        model_type="llama",
        context_length=4096,
    )


def test_a_job_that_cannot_fit_is_refused_naming_the_setting_that_fits(squad, version, settings):
    settings.STUDIO_WORKER_MEMORY_MB = 40_000
    big_model()
    engineer = UserFactory(username="engineer")
    train = {"max_steps": 2, "batch_size": 4, "max_seq_len": 2048}
    with pytest.raises(ValidationFailed) as refused:
        jobs.finetune_job_create(
            actor=engineer, dataset_version=version, base_model="big-7b", train=train
        )
    assert refused.value.field == "train.gradient_checkpointing"
    assert "cannot fit" in refused.value.message
    assert "turn on gradient checkpointing" in refused.value.message
    assert refused.value.extra["memory"]["fits"] is False
    assert FineTuneJob.objects.count() == 0
    # the setting it names makes it fit
    job = jobs.finetune_job_create(
        actor=engineer,
        dataset_version=version,
        base_model="big-7b",
        train={**train, "gradient_checkpointing": True},
    )
    assert job.base_model == "big-7b" and job.train["gradient_checkpointing"] is True


def test_the_preflight_shows_the_estimate_and_a_small_budget_refuses(squad, version, settings):
    settings.STUDIO_WORKER_MEMORY_MB = 64
    engineer = UserFactory(username="engineer")
    with pytest.raises(ValidationFailed, match="cannot fit") as refused:
        preflight.finetune_plan(actor=engineer, dataset_version=version, train={"max_steps": 1})
    assert refused.value.extra["memory"]["budget_mib"] == 64
    settings.STUDIO_WORKER_MEMORY_MB = 8192
    plan = preflight.finetune_plan(actor=engineer, dataset_version=version, train={"max_steps": 1})
    assert plan.memory["fits"] is True
    assert set(plan.memory["terms_mib"]) == {
        "weights",
        "lora_and_optimizer",
        "activations",
        "logits",
        "overhead",
    }
    # 135M parameters in fp32 on the CPU
    assert plan.memory["terms_mib"]["weights"] == pytest.approx(134_515_008 * 4 / 2**20, 0.01)


def test_qlora_needs_a_cuda_gpu(squad, version, settings):
    settings.STUDIO_WORKER_DEVICE = "cpu"
    with pytest.raises(ValidationFailed, match="QLoRA needs a CUDA GPU") as refused:
        jobs.finetune_job_create(
            actor=UserFactory(username="engineer"),
            dataset_version=version,
            train={"max_steps": 1, "qlora": True},
        )
    assert refused.value.field == "train.qlora"
    with pytest.raises(ValidationFailed, match=r"train\.qlora must be true or false"):
        jobs.finetune_job_create(
            actor=UserFactory(username="engineer"),
            dataset_version=version,
            train={"max_steps": 1, "qlora": "yes"},
        )


def test_the_runtime_refuses_qlora_without_cuda(tmp_path):
    """The worker's own check, whatever the web side let through."""
    pytest.importorskip("torch")
    from workers.runtime import training

    with pytest.raises(training.TrainingError, match="QLoRA needs a CUDA GPU"):
        training._load_quantized(tmp_path)


def test_gradient_checkpointing_lowers_the_estimate():
    shape = memory.ModelShape(parameters=10**9, hidden_size=2048, num_layers=24, vocab_size=32000)
    common = {
        "device": "cpu",
        "budget_bytes": 10**12,
        "r": 8,
        "target_modules": 4,
        "batch_size": 8,
        "max_seq_len": 1024,
    }
    without = memory.estimate(shape, gradient_checkpointing=False, **common)
    with_ = memory.estimate(shape, gradient_checkpointing=True, **common)
    assert with_.terms["activations"] * 5 < without.terms["activations"]
    assert with_.terms["weights"] == without.terms["weights"] == 4 * 10**9
