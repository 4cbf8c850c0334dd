"""Fine-tune jobs on several devices, with the training runtime replaced by
tests.finetune.fake_training: the `devices` field (validation, API, form, pre-flight),
a killed training process (requeued and resumed, or failed after the max attempts) and
fair share in device-seconds. The real multi-process runtime is exercised in
tests/workers/test_distributed_training.py."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core import jobs as core_jobs
from apps.core.exceptions import ValidationFailed
from apps.core.queues import Queue
from apps.finetune import jobs, preflight
from apps.finetune.models import Adapter, FineTuneJob
from apps.generation.targets import target_resolve
from tests.factories import PASSWORD, UserFactory, make_squad
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload


@pytest.fixture
def script(monkeypatch):
    s = fake_training.Script()
    fake_training.install(monkeypatch, s)
    return s


@pytest.fixture
def version(squad):
    rows = [chat(f"question {i}", f"answer {i}") for i in range(10)]
    return upload(make_dataset(squad), jsonl(*rows))


def create(version, **kwargs) -> FineTuneJob:
    kwargs.setdefault("train", {"max_steps": 6, "checkpoint_every": 2})
    return jobs.finetune_job_create(
        actor=UserFactory(username="engineer"), dataset_version=version, **kwargs
    )


def test_devices_are_stored_audited_and_reach_the_runtime(squad, version, script):
    job = create(version, devices=2)
    assert job.devices == 2
    created = AuditEvent.objects.get(action="finetune.job_created")
    assert created.data["devices"] == 2
    assert create(version).devices == 1

    jobs.finetune_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert script.devices == [2]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (0, "devices must be 1 to 64 (got 0)"),
        (65, "devices must be 1 to 64 (got 65)"),
        (1.5, "devices must be a whole number"),
        ("two", "devices must be a number"),
        (True, "devices must be a number"),
        (
            3,
            "This job asks for 3 devices; the cpu workers here have 2 training processes a "
            'job may start (on a CPU worker a "device" is one process) '
            "(STUDIO_TRAIN_MAX_CPU_PROCESSES). Ask for at most 2.",
        ),
    ],
)
def test_bad_devices_are_refused_by_field(squad, version, script, devices, message):
    with pytest.raises(ValidationFailed) as info:
        create(version, devices=devices)
    assert info.value.field == "devices"
    assert message in info.value.message
    assert not FineTuneJob.objects.exists()


def test_gpu_workers_offer_their_gpus(squad, version, script, settings):
    settings.STUDIO_WORKER_DEVICE, settings.STUDIO_WORKER_DEVICES = "cuda", 4
    assert create(version, devices=4).devices == 4
    with pytest.raises(ValidationFailed, match=r"have 4 GPUs a job may use \(STUDIO_WORKER_D"):
        create(version, devices=5)
    settings.STUDIO_WORKER_DEVICES = 1
    with pytest.raises(ValidationFailed, match="have 1 GPU a job may use"):
        create(version, devices=2)


def test_a_worker_with_fewer_devices_fails_the_job_and_says_so(squad, version, script, settings):
    job = create(version, devices=2)
    settings.STUDIO_TRAIN_MAX_CPU_PROCESSES = 1  # this worker is configured for one

    jobs.finetune_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == "failed" and job.failure_kind == "invalid_settings"
    assert "asks for 2 devices; this cpu worker" in job.error and "has 1" in job.error
    assert script.calls == []


def test_a_killed_training_process_requeues_the_job_which_resumes_from_its_checkpoint(
    squad, version, script, django_capture_on_commit_callbacks, monkeypatch
):
    job = create(version, devices=2)
    script.lose_at = 4  # after the checkpoint at step 2
    sent = []
    monkeypatch.setattr("apps.core.queues.send", lambda name, *args, queue: sent.append(args))

    with django_capture_on_commit_callbacks(execute=True):
        jobs.finetune_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == "queued" and job.attempts == 1 and not job.finished_at
    assert sent == [(job.pk,)]  # a worker is woken for it
    log = (Path(job.work_dir) / "train.log").read_text()
    assert "process_lost: training process 1 was killed by SIGKILL" in log

    jobs.finetune_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == "succeeded" and job.attempts == 2
    assert script.calls == [0, 2] and job.resumed_at_steps == [0, 2]
    assert Adapter.objects.filter(job=job).exists()


def test_a_job_whose_processes_keep_dying_fails_cleanly_after_its_max_attempts(
    squad, version, script
):
    job = create(version, devices=2)
    FineTuneJob.objects.filter(pk=job.pk).update(max_attempts=2)
    script.lose_at, script.lose_times = 3, 2

    jobs.finetune_job_run(job_id=job.pk)
    jobs.finetune_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == "failed" and job.failure_kind == "process_lost"
    assert job.error.startswith("training process 1 was killed by SIGKILL")
    assert job.attempts == 2 and job.finished_at
    finished = AuditEvent.objects.get(action="finetune.job_finished")
    assert finished.data["failure_kind"] == "process_lost"
    assert not Adapter.objects.exists()


def test_the_pre_flight_plans_memory_per_device(squad, version, script, settings):
    def plan(devices):
        return preflight.finetune_plan(
            actor=UserFactory(username="engineer"),
            dataset_version=version,
            train={"batch_size": 8, "max_seq_len": 256},
            devices=devices,
        )

    one, two = plan(1), plan(2)
    assert (one.devices, two.devices) == (1, 2)
    # each process holds half of every batch; the weights whole (DDP)
    assert two.memory["terms_mib"]["activations"] == pytest.approx(
        one.memory["terms_mib"]["activations"] / 2, rel=0.01
    )
    assert two.memory["terms_mib"]["weights"] == one.memory["terms_mib"]["weights"]
    with pytest.raises(ValidationFailed) as info:
        plan(3)
    assert info.value.field == "devices"
    settings.STUDIO_TRAIN_STRATEGY = "fsdp"  # accelerate shards on GPUs only
    assert plan(2).memory["terms_mib"]["weights"] == one.memory["terms_mib"]["weights"]
    settings.STUDIO_WORKER_DEVICE, settings.STUDIO_WORKER_DEVICES = "cuda", 2
    cuda_one, cuda_fsdp = plan(1), plan(2)  # the weights sharded as well
    assert cuda_fsdp.memory["terms_mib"]["weights"] == pytest.approx(
        cuda_one.memory["terms_mib"]["weights"] / 2, rel=0.01
    )


def test_fair_share_charges_device_seconds(squad, version, script):
    """acme's job ran 100 s on 2 devices (200 device-seconds), beta's 150 s on one: beta
    has used less and goes first. Counted in wall seconds, acme would have."""
    beta = make_squad(
        owner=UserFactory(username="owner"),
        slug="beta",
        name="Beta",
        members={"engineer": ["prompt_engineer"]},
    )
    beta_version = upload(make_dataset(beta, slug="beta-rows"), jsonl(chat(), chat("a", "b")))
    target_resolve(squad_id=beta.pk, name="local")
    now = timezone.now()
    for job, devices, seconds in (
        (create(version, devices=2), 2, 100),
        (create(beta_version), 1, 150),
    ):
        FineTuneJob.objects.filter(pk=job.pk).update(
            status="succeeded",
            devices=devices,
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )
    acme_next, beta_next = create(version), create(beta_version)

    lease = core_jobs.claim_next(Queue.GPU)
    assert lease.job.pk == beta_next.pk

    FineTuneJob.objects.filter(pk=beta_next.pk).update(status="queued", started_at=None)
    FineTuneJob.objects.filter(squad=squad, devices=2).update(devices=1)  # 100 s < 150 s
    assert core_jobs.claim_next(Queue.GPU).job.pk == acme_next.pk


def test_the_api_takes_devices_and_names_the_field_when_refused(squad, version, script, api_as):
    engineer = api_as("engineer")
    url = "/api/v1/squads/acme/finetune-jobs"

    started = engineer.call("POST", url, {"dataset": "support-chat", "devices": 2})

    assert started.status_code == 201, started.content
    assert started.json()["devices"] == 2
    assert engineer.call("GET", f"{url}/{started.json()['id']}").json()["devices"] == 2
    for bad in (0, 3):
        refused = engineer.call("POST", url, {"dataset": "support-chat", "devices": bad})
        assert refused.status_code == 422 and refused.json()["field"] == "devices"
    assert FineTuneJob.objects.count() == 1


def test_the_start_form_takes_devices_shows_them_and_clones_them(squad, version, script):
    client = Client()
    assert client.login(username="engineer", password=PASSWORD)
    form = {"dataset": "support-chat", "target": "local", "max_steps": "4"}

    panel = client.post(
        "/squads/acme/finetune/preflight", {**form, "devices": "2"}, headers={"HX-Request": "true"}
    ).content.decode()
    assert 'id="plan-devices">2 ' in panel and "MiB per device" in panel
    refused = client.post("/squads/acme/finetune/", {**form, "devices": "3"})
    body = refused.content.decode()
    assert refused.status_code == 422 and "<code>devices</code>" in body
    assert 'name="devices" min="1" value="3" aria-invalid="true"' in body
    not_a_number = client.post("/squads/acme/finetune/", {**form, "devices": "two"})
    assert not_a_number.status_code == 422
    assert "Devices must be a number (got &#x27;two&#x27;)" in not_a_number.content.decode()
    assert not FineTuneJob.objects.exists()

    started = client.post("/squads/acme/finetune/", {**form, "devices": "2"})

    job = FineTuneJob.objects.get()
    assert started.status_code == 302 and job.devices == 2
    detail = client.get(f"/squads/acme/finetune/jobs/{job.pk}/").content.decode()
    assert 'id="job-devices">2 ' in detail
    clone = client.get(f"/squads/acme/finetune/?clone={job.pk}").content.decode()
    assert 'name="devices" min="1" value="2"' in clone
