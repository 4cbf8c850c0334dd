"""Admin for fine-tune jobs, adapters and comparisons: read-only; approving adapters goes
through jobs.adapter_approve (the squad's approve_adapters, never the job's author)."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from apps.audit.models import AuditEvent
from apps.finetune import comparisons, jobs
from apps.finetune.models import Adapter
from tests.factories import PASSWORD, UserFactory
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload


@pytest.fixture
def adapter(squad, monkeypatch) -> Adapter:
    fake_training.install(monkeypatch, fake_training.Script())
    version = upload(make_dataset(squad), jsonl(*[chat(f"q{i}", f"a{i}") for i in range(4)]))
    job = jobs.finetune_job_create(
        actor=UserFactory(username="engineer"), dataset_version=version, train={"max_steps": 1}
    )
    jobs.finetune_job_run(job_id=job.pk)
    adapter = Adapter.objects.get(job=job)
    comparisons.adapter_comparison_create(
        actor=UserFactory(username="engineer"), adapter=adapter, prompts=["hi"]
    )
    return adapter


def admin_client(username: str, **flags) -> Client:
    user = UserFactory(username=username, is_staff=True, **flags)
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def test_lists_and_details_are_read_only(adapter):
    client = admin_client("root", is_superuser=True)
    for model, pk in (
        ("finetunejob", adapter.job_id),
        ("adapter", adapter.pk),
        ("adaptercomparison", adapter.comparisons.get().pk),
    ):
        listed = client.get(f"/admin/finetune/{model}/")
        assert listed.status_code == 200, model
        detail = client.get(f"/admin/finetune/{model}/{pk}/change/")
        assert detail.status_code == 200 and b'name="_save"' not in detail.content, model
        assert client.get(f"/admin/finetune/{model}/add/").status_code == 403, model
        assert client.post(f"/admin/finetune/{model}/{pk}/delete/").status_code == 403, model


def test_approve_action_goes_through_the_service(adapter):
    staff = UserFactory(username="helpdesk", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_adapter"))
    client = admin_client("helpdesk")
    action = {"action": "approve", "_selected_action": [adapter.pk]}
    refused = client.post("/admin/finetune/adapter/", action, follow=True)
    assert f"Adapter {adapter.pk}: " in refused.content.decode()  # not in the squad
    adapter.refresh_from_db()
    assert not adapter.approved

    done = admin_client("root", is_superuser=True).post(
        "/admin/finetune/adapter/", action, follow=True
    )
    assert "Approved 1 adapter(s)." in done.content.decode()
    adapter.refresh_from_db()
    assert adapter.approved and adapter.approved_by.username == "root"
    assert AuditEvent.objects.get(action="finetune.adapter_approved").actor.username == "root"
