"""Fine-tune job and adapter services, with the training runtime replaced by
tests.finetune.fake_training (the real one is exercised in test_worker_finetune.py)."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core import jobs as core_jobs
from apps.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationFailed
from apps.finetune import jobs
from apps.finetune.models import Adapter, FineTuneJob
from apps.generation.models import ModelTarget
from tests.basemodels.factories import ready_model
from tests.factories import UserFactory
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload
from tests.reviews import queue_factories as f


@pytest.fixture
def script(monkeypatch):
    s = fake_training.Script()
    fake_training.install(monkeypatch, s)
    return s


@pytest.fixture
def version(squad):
    dataset = make_dataset(squad)
    rows = [chat(f"question {i}", f"answer {i}") for i in range(10)]
    return upload(dataset, jsonl(*rows))


def user(name: str):
    return UserFactory(username=name)


def create(version, *, actor="engineer", callbacks=None, **kwargs) -> FineTuneJob:
    kwargs.setdefault("train", {"max_steps": 4, "checkpoint_every": 2})
    return jobs.finetune_job_create(actor=user(actor), dataset_version=version, **kwargs)


def converted_model(data_dir: Path, model: str = "smollm2-135m-instruct") -> None:
    directory = data_dir / "models" / model
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')


def test_create_queues_at_commit_and_the_run_makes_an_adapter(
    squad, version, script, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        job = create(version, lora={"r": 4, "target_modules": ["q_proj"]})
    assert len(callbacks) == 1 and job.status == "queued"
    assert job.lora == {"r": 4, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj"]}
    assert job.train["max_steps"] == 4 and job.train["learning_rate"] == 2e-4
    assert AuditEvent.objects.filter(action="finetune.job_created").count() == 1
    jobs.finetune_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert (job.step, job.total_steps, job.epoch) == (4, 4, 1.0)
    assert job.loss == 0.5 and job.eval_loss == pytest.approx(0.6)
    assert [p[0] for p in job.points] == [1, 2, 3, 4]
    assert job.resumed_at_steps == [0]
    adapter = Adapter.objects.get(job=job)
    assert adapter.dataset_version == version and adapter.size_bytes > 0
    assert adapter.base_model == "smollm2-135m-instruct" and not adapter.approved
    # The runtime got chat rows with their split, meta dropped.
    assert len(script.rows) == 10 and set(script.rows[0]) == {"messages", "split"}
    assert "training smollm2-135m-instruct" in (Path(job.work_dir) / "train.log").read_text()
    actions = list(AuditEvent.objects.values_list("action", flat=True).order_by("pk"))
    assert actions[-2:] == ["finetune.adapter_created", "finetune.job_finished"]


@pytest.mark.parametrize(
    ("lora", "train", "field", "message"),
    [
        ({"r": 0}, {}, "lora.r", "lora.r must be 1 to 256 (got 0)"),
        ({"rank": 8}, {}, "lora.rank", "Unknown lora setting(s): rank"),
        ({"dropout": "x"}, {}, "lora.dropout", "must be a number"),
        ({"target_modules": "q_proj"}, {}, "lora.target_modules", "non-empty list"),
        ({}, {"batch_size": 2.5}, "train.batch_size", "whole number"),
        ({}, {"learning_rate": 0}, "train.learning_rate", "train.learning_rate must be"),
        ({}, {"max_seq_len": 9000}, "train.max_seq_len", "context of 8192 tokens"),
    ],
)
def test_create_refuses_bad_settings_by_field(squad, version, script, lora, train, field, message):
    with pytest.raises(
        ValidationFailed, match=message.replace("(", r"\(").replace(")", r"\)")
    ) as e:
        create(version, lora=lora, train=train)
    assert e.value.field == field
    assert not FineTuneJob.objects.exists()


def test_unknown_target_modules_are_refused_by_name_when_the_model_is_converted(
    squad, version, script, settings
):
    converted_model(Path(settings.DATA_DIR))
    with pytest.raises(ValidationFailed, match="'attn_qkv' does not exist") as e:
        create(version, lora={"target_modules": ["q_proj", "attn_qkv"]})
    assert e.value.field == "lora.target_modules"
    assert "q_proj'" not in e.value.message.split("(it has")[0]


def test_without_a_converted_model_the_worker_refuses_with_a_readable_reason(
    squad, version, script, settings
):
    job = create(version, lora={"target_modules": ["attn_qkv"]})  # nothing to read yet
    converted_model(Path(settings.DATA_DIR))  # the worker converted it
    jobs.finetune_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and job.failure_kind == "invalid_settings"
    assert "target module 'attn_qkv' does not exist" in job.error
    assert script.calls == []


def test_create_refuses_remote_targets_empty_datasets_and_other_roles(squad, version, script):
    ModelTarget.objects.create(squad=squad, name="tgi", kind="remote", base_url="http://x")
    with pytest.raises(ValidationFailed, match="'tgi' is remote"):
        create(version, target_name="tgi")
    with pytest.raises(NotFound, match="No enabled model target named 'nope'"):
        create(version, target_name="nope")
    with pytest.raises(PermissionDenied):
        create(version, actor="sme")
    empty = make_dataset(squad, slug="one-row")
    only = upload(empty, jsonl(chat()), eval_fraction=0.0)
    only.train_count = 0
    with pytest.raises(ValidationFailed, match="has no train rows"):
        create(only)


def test_variables_rows_are_rendered_into_chat_rows(squad, script):
    dataset = make_dataset(squad, slug="vars", format="variables", prompt_version=f.version(squad))
    version = upload(dataset, jsonl({"variables": f.VARIABLES, "output": "It left today."}))
    job = create(version)
    jobs.finetune_job_run(job_id=job.pk)
    messages = script.rows[0]["messages"]
    assert messages[-1] == {"role": "assistant", "content": "It left today."}
    assert any("Where is my parcel?" in m["content"] for m in messages[:-1])


def test_cancel_a_queued_job_at_once(squad, version, script):
    job = create(version)
    job = jobs.finetune_job_cancel(actor=user("owner"), job=job)
    assert job.status == "cancelled" and job.finished_at
    jobs.finetune_job_run(job_id=job.pk)
    assert script.calls == []
    with pytest.raises(Conflict, match=f"job {job.pk} is already cancelled"):
        jobs.finetune_job_cancel(actor=user("owner"), job=job)
    with pytest.raises(PermissionDenied):
        jobs.finetune_job_cancel(actor=user("viewer"), job=create(version))


def test_cancel_a_running_job_stops_within_one_step(squad, version, script):
    job = create(version, train={"max_steps": 50})
    script.on_step = lambda step: (
        step == 3 and jobs.finetune_job_cancel(actor=user("engineer"), job=job)
    )
    jobs.finetune_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "cancelled" and job.step == 3
    assert AuditEvent.objects.filter(action="finetune.job_cancel_requested").count() == 1
    assert not Adapter.objects.exists()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("out_of_memory", "out of memory"), ("bad_data", "row 3 has no assistant message")],
)
def test_out_of_memory_and_bad_data_fail_with_the_reason(squad, version, script, kind, reason):
    script.fail_kind, script.fail_at = kind, 2
    job = create(version)
    jobs.finetune_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and job.failure_kind == kind
    assert reason in job.error and job.finished_at
    event = AuditEvent.objects.filter(action="finetune.job_finished").get()
    assert event.data["failure_kind"] == kind


def _go_stale(job: FineTuneJob) -> None:
    FineTuneJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - core_jobs.stale_after() - timedelta(seconds=1)
    )


def test_a_dead_worker_s_job_is_requeued_and_resumes_from_its_checkpoint(
    squad, version, script, django_capture_on_commit_callbacks, monkeypatch
):
    job = create(version, train={"max_steps": 6, "checkpoint_every": 2})
    script.die_at = 4  # after the checkpoint at step 2 and the progress of step 3
    with pytest.raises(SystemExit):
        jobs.finetune_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "running" and job.step == 3
    assert core_jobs.recover() == {}  # its heartbeat is still fresh
    _go_stale(job)
    enqueued = []
    monkeypatch.setattr(
        "apps.core.queues.send", lambda name, *args, queue: enqueued.append((name, *args))
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert core_jobs.recover() == {"finetune": ([job.pk], [])}
    assert enqueued == [("finetune.job", job.pk)]
    script.die_at = None
    monkeypatch.setattr("apps.core.jobs.worker_name", lambda: "rescuer:1")
    jobs.finetune_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.attempts == 2 and job.worker == "rescuer:1"
    assert script.calls == [0, 2]  # the second run started from the checkpoint
    assert job.resumed_at_steps == [0, 2]
    assert [p[0] for p in job.points] == [1, 2, 3, 4, 5, 6]  # step 3 once, not twice


def test_the_sweeper_fails_a_job_that_lost_too_many_workers(squad, version, script):
    job = create(version)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status="running", attempts=job.max_attempts, worker="gone:1", step=7
    )
    _go_stale(job)
    assert core_jobs.recover() == {"finetune": ([], [job.pk])}
    job.refresh_from_db()
    assert job.status == "failed" and job.failure_kind == "worker_lost"
    assert f"stopped {job.max_attempts} times" in job.error and "gone:1" in job.error


def test_a_live_lease_keeps_a_second_runner_out_and_a_lost_lease_stops_the_first(
    squad, version, script, monkeypatch
):
    job = create(version, train={"max_steps": 10})
    FineTuneJob.objects.filter(pk=job.pk).update(
        status="running", worker="other:1", heartbeat_at=timezone.now()
    )
    assert jobs.finetune_job_run(job_id=job.pk) is None and script.calls == []
    FineTuneJob.objects.filter(pk=job.pk).update(status="queued", worker="")

    def taken(step: int) -> None:
        if step == 2:  # the sweeper gave the job to another worker meanwhile
            # (a new claim: a new lease token)
            FineTuneJob.objects.filter(pk=job.pk).update(worker="other:2", lease_token="b" * 32)

    script.on_step = taken
    assert jobs.finetune_job_run(job_id=job.pk) is None
    job.refresh_from_db()
    assert job.status == "running" and job.worker == "other:2" and job.step == 1


def _trained(squad, version, actor: str = "engineer") -> Adapter:
    job = create(version, actor=actor)
    jobs.finetune_job_run(job_id=job.pk)
    return Adapter.objects.get(job=job)


def test_adapter_approval_by_compliance_not_by_the_job_s_author(squad, version, script):
    adapter = _trained(squad, version, actor="owner")
    with pytest.raises(PermissionDenied):
        jobs.adapter_approve(actor=user("engineer"), adapter=adapter)
    with pytest.raises(Conflict, match=f"You started fine-tune job {adapter.job_id}"):
        jobs.adapter_approve(actor=user("owner"), adapter=adapter)
    adapter = jobs.adapter_approve(actor=user("compliance"), adapter=adapter)
    assert adapter.approved and adapter.approved_by.username == "compliance"
    with pytest.raises(Conflict, match="already approved"):
        jobs.adapter_approve(actor=user("compliance"), adapter=adapter)
    assert AuditEvent.objects.filter(action="finetune.adapter_approved").count() == 1


def test_only_an_approved_adapter_goes_on_the_squad_s_own_local_target(squad, version, script):
    adapter = _trained(squad, version)
    mine = ModelTarget.objects.create(
        squad=squad, name="tuned", kind="local", base_model="smollm2-135m-instruct"
    )
    owner = user("owner")
    with pytest.raises(Conflict, match=f"adapter {adapter.pk} is not approved"):
        jobs.model_target_set_adapter(actor=owner, target=mine, adapter=adapter)
    jobs.adapter_approve(actor=user("compliance"), adapter=adapter)
    adapter.refresh_from_db()
    with pytest.raises(PermissionDenied):
        jobs.model_target_set_adapter(actor=user("engineer"), target=mine, adapter=adapter)
    glob = ModelTarget.objects.get(squad__isnull=True, name="local")
    with pytest.raises(ValidationFailed, match="'local' is global"):
        jobs.model_target_set_adapter(actor=owner, target=glob, adapter=adapter)
    ready_model("x")
    other = ModelTarget.objects.create(squad=squad, name="other", kind="local", base_model="x")
    with pytest.raises(ValidationFailed, match="trained on 'smollm2-135m-instruct' \\(manifest"):
        jobs.model_target_set_adapter(actor=owner, target=other, adapter=adapter)
    target = jobs.model_target_set_adapter(actor=owner, target=mine, adapter=adapter)
    assert target.lora_adapter == adapter
    assert AuditEvent.objects.get(action="generation.target_adapter_set").data["adapter"] == (
        adapter.pk
    )
    target = jobs.model_target_set_adapter(actor=owner, target=mine, adapter=None)
    assert target.lora_adapter is None


def test_a_target_s_adapter_reaches_the_runtime(squad, version, script, monkeypatch):

    from apps.generation.pipeline import target_spec as _spec
    from workers.runtime import backends

    adapter = jobs.adapter_approve(actor=user("compliance"), adapter=_trained(squad, version))
    target = ModelTarget.objects.create(
        squad=squad, name="tuned", kind="local", base_model="smollm2-135m-instruct"
    )
    jobs.model_target_set_adapter(actor=user("owner"), target=target, adapter=adapter)
    spec = _spec(ModelTarget.objects.get(pk=target.pk))
    assert spec.adapter_dir == adapter.path
    loaded = []
    import sys

    def load_adapter_model(base_model, adapter_dir, base_model_sha256):
        loaded.append((base_model, adapter_dir, base_model_sha256))
        return object()

    monkeypatch.setattr(
        sys.modules["workers.runtime.training"],
        "load_adapter_model",
        load_adapter_model,
        raising=False,
    )
    assert backends.run_conversations(spec, [], None) == []  # loads the model, runs nothing
    assert loaded == [("smollm2-135m-instruct", Path(adapter.path), adapter.base_model_sha256)]
