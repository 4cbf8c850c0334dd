"""Each emitting service emits its event inside its own transaction, with the right data;
a rolled-back change emits nothing."""

import pytest
from django.db import transaction

from apps.webhooks import events, services
from apps.webhooks.events import SUBSCRIBABLE
from apps.webhooks.models import WebhookDelivery
from tests.factories import UserFactory
from tests.reviews.factories import approve, engineer_prompt, new_version, open_review


@pytest.fixture
def hook(squad):
    webhook, _ = services.webhook_create(
        actor=UserFactory(username="owner"),
        squad=squad,
        url="https://receiver.example/hook",
        events=list(SUBSCRIBABLE),
    )
    return webhook


def sent(event: str) -> list[dict]:
    return [
        d.payload
        for d in WebhookDelivery.objects.filter(event=event).order_by("id")
        if d.payload["type"] == event
    ]


def test_version_created(hook, squad) -> None:
    template = engineer_prompt(squad)
    new_version(template, 2)
    first, second = sent("version.created")
    data = second["data"]
    assert data == {
        "squad": "acme",
        "template": "support",
        "version": 2,
        "version_id": template.versions.get(number=2).pk,
        "content_hash": template.versions.get(number=2).content_hash,
        "parent": 1,
        "commit_message": "v2",
        "actor": "engineer",
        "url": "/squads/acme/prompts/support/versions/2",
    }
    assert first["data"]["version"] == 1 and first["data"]["parent"] is None
    assert "messages" not in data  # no prompt bodies
    assert WebhookDelivery.objects.get(pk=WebhookDelivery.objects.last().pk).status == "pending"


def test_label_moved(hook, squad) -> None:
    from apps.prompts import services as prompts

    template = engineer_prompt(squad)
    v2 = new_version(template, 2)
    prompts.label_move(
        actor=UserFactory(username="engineer"), template=template, name="staging", version=v2
    )
    (payload,) = sent("label.moved")
    assert payload["data"] == {
        "squad": "acme",
        "template": "support",
        "label": "staging",
        "from_version": None,
        "to_version": 2,
        "content_hash": v2.content_hash,
        "protected": False,
        "actor": "engineer",
        "url": "/squads/acme/prompts/support/versions/2",
    }


def test_review_requested_and_decided(hook, squad) -> None:
    template = engineer_prompt(squad)
    review = open_review(template.latest_version)
    (requested,) = sent("review.requested")
    assert requested["data"]["review_request"] == review.pk
    assert requested["data"]["actor"] == "engineer"
    assert requested["data"]["state"] == "open"
    assert requested["data"]["url"] == f"/squads/acme/reviews/{review.pk}"
    approve(template.latest_version)
    decided = sent("review.decided")
    assert decided, "approving must emit review.decided"
    last = decided[-1]["data"]
    assert last["verdict"] == "approve"
    assert last["state"] == "approved"
    assert last["version"] == 1 and last["template"] == "support"
    assert last["actor"] in {"sme", "compliance", "owner"}
    assert "comment" not in last


def test_batch_job_finished(hook, squad) -> None:
    from apps.generation import services as generation
    from tests.generation.fake_openai import FakeOpenAI
    from tests.generation.test_services import _job

    with FakeOpenAI() as server:
        job = _job(squad, server, 3)
        assert sent("job.finished") == []
        generation.batch_job_run(job_id=job.pk)
    (payload,) = sent("job.finished")
    assert payload["data"] == {
        "squad": "acme",
        "kind": "batch",
        "job": job.pk,
        "status": "succeeded",
        "url": f"/squads/acme/batches/{job.pk}/",
        "template": "writer",
        "version": 1,
        "target": "fake",
        "rows_done": 3,
        "rows_total": 3,
        "actor": "engineer",
    }


def test_batch_job_cancelled_while_queued(hook, squad) -> None:
    from apps.generation import services as generation
    from tests.generation.fake_openai import FakeOpenAI
    from tests.generation.test_services import _job

    with FakeOpenAI() as server:
        job = _job(squad, server, 2)
    generation.batch_job_cancel(actor=UserFactory(username="engineer"), job=job)
    (payload,) = sent("job.finished")
    assert payload["data"]["status"] == "cancelled" and payload["data"]["kind"] == "batch"


def test_finetune_job_finished_with_its_adapter(hook, squad, monkeypatch, settings, tmp_path):
    from apps.finetune import jobs
    from apps.finetune.models import Adapter
    from tests.finetune import fake_training
    from tests.finetune.conftest import chat, jsonl, make_dataset, upload

    settings.DATA_DIR = tmp_path
    fake_training.install(monkeypatch, fake_training.Script())
    version = upload(make_dataset(squad), jsonl(*[chat(f"q {i}", f"a {i}") for i in range(10)]))
    job = jobs.finetune_job_create(
        actor=UserFactory(username="engineer"),
        dataset_version=version,
        train={"max_steps": 2, "checkpoint_every": 2},
    )
    jobs.finetune_job_run(job_id=job.pk)
    (payload,) = sent("job.finished")
    data = payload["data"]
    assert data["kind"] == "finetune" and data["status"] == "succeeded"
    assert data["adapter"] == Adapter.objects.get(job=job).pk
    assert data["dataset"] == "support-chat" and data["dataset_version"] == 1
    assert data["url"] == f"/squads/acme/finetune/jobs/{job.pk}/"
    queued = jobs.finetune_job_create(
        actor=UserFactory(username="engineer"), dataset_version=version
    )
    jobs.finetune_job_cancel(actor=UserFactory(username="engineer"), job=queued)
    cancelled = sent("job.finished")[-1]["data"]
    assert cancelled["job"] == queued.pk and cancelled["status"] == "cancelled"
    assert cancelled["adapter"] is None


def test_rolled_back_change_emits_nothing(hook, squad, django_capture_on_commit_callbacks) -> None:
    template = engineer_prompt(squad)
    before = WebhookDelivery.objects.count()
    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        new_version(template, 2)
        assert WebhookDelivery.objects.count() == before + 1  # inside: stored
        raise RuntimeError("the caller's transaction fails after the emit")
    assert WebhookDelivery.objects.count() == before
    assert callbacks == []  # no task queued


def test_committed_change_queues_one_task_per_delivery(
    hook, squad, django_capture_on_commit_callbacks, scheduled
) -> None:
    template = engineer_prompt(squad)
    with django_capture_on_commit_callbacks(execute=True):
        new_version(template, 2)
    delivery = WebhookDelivery.objects.filter(event="version.created").latest("id")
    assert scheduled == [(delivery.pk, 0)]


def test_only_enabled_subscribed_webhooks_of_the_squad_get_it(squad) -> None:
    from tests.factories import make_squad

    owner = UserFactory(username="owner")
    sub, _ = services.webhook_create(
        actor=owner, squad=squad, url="https://a.example/", events=["version.created"]
    )
    services.webhook_create(
        actor=owner, squad=squad, url="https://b.example/", events=["label.moved"]
    )
    services.webhook_create(
        actor=owner,
        squad=squad,
        url="https://c.example/",
        events=["version.created"],
        enabled=False,
    )
    other = make_squad(owner=owner, slug="other", name="Other")
    services.webhook_create(
        actor=owner, squad=other, url="https://d.example/", events=["version.created"]
    )
    events.emit(squad_id=squad.pk, event="version.created", data={"x": 1})
    assert list(WebhookDelivery.objects.values_list("webhook_id", flat=True)) == [sub.pk]


def test_unknown_event_is_a_programming_error(squad) -> None:
    with pytest.raises(ValueError, match="Unknown webhook event"):
        events.emit(squad_id=squad.pk, event="version.deleted", data={})
