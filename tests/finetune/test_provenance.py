"""A local target's trained adapter is named, with its hash, on every Generation it makes
and in the Generation's signed provenance manifest (apps.generation.pipeline.seal)."""

import pytest

from apps.finetune import jobs
from apps.finetune.models import Adapter
from apps.generation import services as generation
from apps.generation.models import ModelTarget
from apps.governance import provenance
from tests.factories import UserFactory
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload
from tests.generation.conftest import text_prompt
from workers.runtime import GenerationResult


@pytest.fixture
def runtime(monkeypatch):
    """The generation runtime: answers "ok" and records the target specs it was given."""
    from workers.runtime import backends

    specs = []

    def run_conversations(spec, conversations, params, *, batch_size=8, on_progress=None):
        specs.append(spec)
        return [GenerationResult("ok", 3, 1) for _ in conversations]

    monkeypatch.setattr(backends, "run_conversations", run_conversations)
    return specs


@pytest.fixture
def approved_adapter(squad, monkeypatch) -> Adapter:
    fake_training.install(monkeypatch, fake_training.Script())
    version = upload(make_dataset(squad), jsonl(*[chat(f"q{i}", f"a{i}") for i in range(4)]))
    job = jobs.finetune_job_create(
        actor=UserFactory(username="engineer"), dataset_version=version, train={"max_steps": 1}
    )
    jobs.finetune_job_run(job_id=job.pk)
    adapter = Adapter.objects.get(job=job)
    return jobs.adapter_approve(actor=UserFactory(username="compliance"), adapter=adapter)


def _generate(version):
    requested = generation.generation_request(
        actor=UserFactory(username="engineer"), version=version, variables={"topic": "tea"}
    )
    return generation.generation_run(generation_id=requested.pk)


def test_the_adapter_s_hash_is_on_the_generation_and_in_its_signed_provenance(
    squad, approved_adapter, runtime
):
    target = ModelTarget.objects.create(
        squad=squad, name="tuned", kind="local", base_model="smollm2-135m-instruct"
    )
    jobs.model_target_set_adapter(
        actor=UserFactory(username="owner"), target=target, adapter=approved_adapter
    )
    done = _generate(text_prompt(squad, target="tuned"))
    assert done.status == "ok", done.errors
    expected = f"adapter-{approved_adapter.pk}@sha256:{approved_adapter.sha256}"
    assert done.adapter == expected
    assert runtime[-1].adapter_dir == approved_adapter.path
    done.refresh_from_db()
    assert done.adapter == expected and done.provenance["adapter"] == expected
    verdict = provenance.verify(
        manifest=done.provenance,
        signature=done.provenance_signature,
        key_id=done.provenance_key_id,
        output=done.output_text,
    )
    assert verdict.valid, verdict.reasons
    # Another adapter's hash in the manifest breaks the signature.
    forged = {**done.provenance, "adapter": f"adapter-{approved_adapter.pk}@sha256:{'0' * 64}"}
    assert not provenance.verify(
        manifest=forged,
        signature=done.provenance_signature,
        key_id=done.provenance_key_id,
        output=None,
    ).valid

    # Detached: the next generation names no adapter.
    jobs.model_target_set_adapter(actor=UserFactory(username="owner"), target=target, adapter=None)
    plain = _generate(text_prompt(squad, target="tuned", slug="plain"))
    assert plain.adapter == "" and plain.provenance["adapter"] is None


def test_a_remote_target_s_tgi_adapter_id_is_named_as_before(squad, runtime):
    ModelTarget.objects.create(
        squad=squad,
        name="tgi",
        kind="remote",
        base_url="http://127.0.0.1:9/",
        adapter_id="adapter-7",
    )
    done = _generate(text_prompt(squad, target="tgi"))
    assert done.adapter == "adapter-7" and done.provenance["adapter"] == "adapter-7"
