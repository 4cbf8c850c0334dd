"""The REST API: CRUD, the secret shown once, rotate, test-send, the delivery log, redeliver,
and who may do what."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.webhooks import delivery as dl
from apps.webhooks.models import Webhook, WebhookDelivery

BASE = "/api/v1/squads/acme/webhooks"


@pytest.fixture
def owner(squad, api_as):
    return api_as("owner")


def _create(client, **body):
    body = {"url": "https://receiver.example/hook", "events": ["version.created"], **body}
    return client.call("POST", BASE, body)


def test_create_returns_the_secret_once_and_never_again(owner) -> None:
    response = _create(owner, description="CI")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["version.created"] and created["enabled"] is True
    assert created["created_by"] == "owner"
    webhook = Webhook.objects.get(pk=created["id"])
    assert webhook.secret == created["secret"]
    listed = owner.call("GET", BASE).json()
    detail = owner.call("GET", f"{BASE}/{webhook.pk}").json()
    assert "secret" not in listed[0] and "secret" not in detail
    assert created["secret"] not in owner.call("GET", BASE).content.decode()
    event = AuditEvent.objects.get(action="webhook.created")
    assert event.data["url"] == "https://receiver.example/hook"
    assert created["secret"] not in str(event.data)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"url": "ftp://example.com/x"}, "url", "http:// or https://"),
        ({"url": "not a url"}, "url", "http:// or https://"),
        ({"url": ""}, "url", "Enter the URL"),
        ({"events": []}, "events", "at least one"),
        ({"events": ["version.deleted"]}, "events", "Unknown event(s): version.deleted"),
        ({"events": ["webhook.test"]}, "events", "Unknown event(s): webhook.test"),
        ({"description": "x" * 201}, "description", "limit is 200"),
    ],
)
def test_bad_input_names_the_field(owner, body, field, message) -> None:
    response = _create(owner, **body)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert message in response.json()["detail"]
    assert not Webhook.objects.exists()


def test_update_and_delete_are_audited(owner) -> None:
    hook_id = _create(owner).json()["id"]
    response = owner.call(
        "PATCH", f"{BASE}/{hook_id}", {"events": ["label.moved", "job.finished"], "enabled": False}
    )
    assert response.status_code == 200
    assert response.json()["events"] == ["label.moved", "job.finished"]
    assert response.json()["enabled"] is False
    event = AuditEvent.objects.get(action="webhook.updated")
    assert event.data["changed"] == ["enabled", "events"]
    assert event.data["before"]["events"] == ["version.created"]
    bad = owner.call("PATCH", f"{BASE}/{hook_id}", {"url": "javascript:alert(1)"})
    assert bad.status_code == 422 and bad.json()["field"] == "url"
    assert owner.call("DELETE", f"{BASE}/{hook_id}").status_code == 204
    assert not Webhook.objects.exists()
    assert AuditEvent.objects.filter(action="webhook.deleted").count() == 1
    assert owner.call("GET", f"{BASE}/{hook_id}").status_code == 404


def test_rotate_gives_a_new_secret_once(owner) -> None:
    created = _create(owner).json()
    response = owner.call("POST", f"{BASE}/{created['id']}/secret")
    assert response.status_code == 200
    new = response.json()["secret"]
    assert new.startswith("whsec_") and new != created["secret"]
    assert Webhook.objects.get(pk=created["id"]).secret == new
    assert owner.call("GET", f"{BASE}/{created['id']}").json()["secret_rotated_at"]
    assert AuditEvent.objects.filter(action="webhook.secret_rotated").count() == 1


def test_test_send_delivers_to_a_real_receiver_and_the_log_shows_it(
    owner, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    from apps.webhooks import signing

    server = receiver(500, 204)
    created = _create(owner, url=server.url).json()
    response = owner.call("POST", f"{BASE}/{created['id']}/test")
    assert response.status_code == 202
    queued = response.json()
    assert queued["event"] == "webhook.test" and queued["status"] == "pending"
    assert AuditEvent.objects.filter(action="webhook.test_sent").count() == 1

    dl.delivery_attempt(delivery_id=queued["id"])
    WebhookDelivery.objects.filter(pk=queued["id"]).update(next_attempt_at=timezone.now())
    dl.delivery_attempt(delivery_id=queued["id"])
    body = signing.verify(created["secret"], server.requests[-1].headers, server.requests[-1].body)
    assert body["type"] == "webhook.test" and body["data"]["squad"] == "acme"

    log = owner.call("GET", f"{BASE}/{created['id']}/deliveries").json()
    assert len(log) == 1
    assert log[0]["status"] == "succeeded" and log[0]["attempts"] == 2
    assert [a["status_code"] for a in log[0]["attempt_log"]] == [500, 204]
    assert log[0]["attempt_log"][0]["response_excerpt"] == "answer 500"
    assert owner.call("GET", f"{BASE}/{created['id']}/deliveries?status=failed").json() == []
    bad = owner.call("GET", f"{BASE}/{created['id']}/deliveries?status=lost")
    assert bad.status_code == 422 and bad.json()["field"] == "status"
    one = owner.call("GET", f"{BASE}/{created['id']}/deliveries/{queued['id']}").json()
    assert one["event_id"] == queued["event_id"]


def test_test_send_refused_when_disabled(owner) -> None:
    hook_id = _create(owner, enabled=False).json()["id"]
    response = owner.call("POST", f"{BASE}/{hook_id}/test")
    assert response.status_code == 409 and "disabled" in response.json()["detail"]


def test_redeliver_a_finished_delivery_keeps_its_webhook_id(owner, scheduled) -> None:
    hook_id = _create(owner).json()["id"]
    queued = owner.call("POST", f"{BASE}/{hook_id}/test").json()
    pending = owner.call("POST", f"{BASE}/{hook_id}/deliveries/{queued['id']}/redeliver")
    assert pending.status_code == 409 and "still pending" in pending.json()["detail"]
    WebhookDelivery.objects.filter(pk=queued["id"]).update(status="failed", next_attempt_at=None)
    response = owner.call("POST", f"{BASE}/{hook_id}/deliveries/{queued['id']}/redeliver")
    assert response.status_code == 202
    again = response.json()
    assert again["id"] != queued["id"] and again["event_id"] == queued["event_id"]
    assert again["redelivery_of"] == queued["id"] and again["payload"] == queued["payload"]
    assert AuditEvent.objects.filter(action="webhook.redelivered").count() == 1


def test_other_squads_webhooks_are_not_found(owner, squad) -> None:
    from apps.webhooks import services
    from tests.factories import UserFactory, make_squad

    stranger = UserFactory(username="stranger")
    other = make_squad(owner=stranger, slug="other", name="Other")
    theirs, _ = services.webhook_create(
        actor=stranger, squad=other, url="https://x.example/", events=["label.moved"]
    )
    assert owner.call("GET", f"{BASE}/{theirs.pk}").status_code == 404
    assert owner.call("GET", f"/api/v1/squads/other/webhooks/{theirs.pk}").status_code == 404
    assert owner.call("DELETE", f"{BASE}/{theirs.pk}").status_code == 404
    assert Webhook.objects.filter(pk=theirs.pk).exists()


@pytest.mark.parametrize("role", ["engineer", "sme", "compliance", "viewer"])
def test_members_who_are_not_owners_get_403(squad, api_as, role) -> None:
    client = api_as(role)
    assert client.call("GET", BASE).status_code == 403
    assert _create(client).status_code == 403


def test_delivery_list_costs_a_fixed_number_of_queries(
    owner, scheduled, django_assert_max_num_queries
) -> None:
    hook_id = _create(owner).json()["id"]
    for _ in range(5):
        owner.call("POST", f"{BASE}/{hook_id}/test")
    with CaptureQueriesContext(connection) as few:
        assert len(owner.call("GET", f"{BASE}/{hook_id}/deliveries").json()) == 5
    few_count = len(few)  # read now: every request resets the connection's query log
    assert 0 < few_count <= 12
    for _ in range(20):
        owner.call("POST", f"{BASE}/{hook_id}/test")
    with django_assert_max_num_queries(few_count):
        assert len(owner.call("GET", f"{BASE}/{hook_id}/deliveries").json()) == 25


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "CI\x00"}, "description"),
        ({"url": "https://receiver.example/ho\x00ok"}, "url"),
    ],
)
def test_nul_characters_are_refused(owner, body, field) -> None:
    # PostgreSQL text cannot hold NUL: stored, it would be a 500 there.
    response = _create(owner, **body)
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field
    assert not Webhook.objects.exists()
