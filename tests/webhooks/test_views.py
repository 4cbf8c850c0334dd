"""The HTML pages: list + add (secret shown once), detail with the delivery log, htmx
test-send and redeliver, rotate, delete."""

import pytest
from django.test import Client
from django.utils import timezone

from apps.webhooks import delivery as dl
from apps.webhooks.models import Webhook, WebhookDelivery
from tests.factories import PASSWORD, UserFactory

PAGE = "/squads/acme/webhooks/"
HX = {"HX-Request": "true"}


def login(username: str) -> Client:
    client = Client()
    UserFactory(username=username)
    assert client.login(username=username, password=PASSWORD)
    return client


@pytest.fixture
def owner(squad) -> Client:
    return login("owner")


def _add(client: Client, **data):
    form = {"url": "https://receiver.example/hook", "events": ["version.created"], "enabled": "on"}
    return client.post(PAGE, {**form, **data}, headers=HX)


def test_add_shows_the_secret_once(owner) -> None:
    response = _add(owner, description="Slack relay")
    assert response.status_code == 201
    webhook = Webhook.objects.get()
    html = response.content.decode()
    assert webhook.secret in html and 'id="new-webhook-secret"' in html
    assert "Slack relay" in html
    assert webhook.secret not in owner.get(PAGE).content.decode()
    detail = owner.get(f"{PAGE}{webhook.pk}/").content.decode()
    assert webhook.secret not in detail and "https://receiver.example/hook" in detail


def test_add_refusal_is_inline_with_the_field(owner) -> None:
    response = _add(owner, url="ftp://nope", events=[])
    assert response.status_code == 422
    html = response.content.decode()
    assert "<code>url</code>" in html and "http:// or https://" in html
    assert 'value="ftp://nope"' in html  # the form keeps what was typed
    assert not Webhook.objects.exists()


def test_detail_log_shows_codes_attempts_and_next_retry(
    owner, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    server = receiver(500, 200)
    _add(owner, url=server.url)
    webhook = Webhook.objects.get()
    response = owner.post(f"{PAGE}{webhook.pk}/test", headers=HX)
    assert response.status_code == 200
    assert "Queued delivery" in response.content.decode()
    assert 'id="delivery-log"' in response.content.decode()
    assert "<html" not in response.content.decode()  # the partial only
    delivery = WebhookDelivery.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        dl.delivery_attempt(delivery_id=delivery.pk)
    html = owner.get(f"{PAGE}{webhook.pk}/log", headers=HX).content.decode()
    assert "retrying" in html and "HTTP 500" in html
    delivery.refresh_from_db()
    assert delivery.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S") in html
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    dl.delivery_attempt(delivery_id=delivery.pk)
    html = owner.get(f"{PAGE}{webhook.pk}/").content.decode()
    assert "succeeded" in html and "HTTP 500" in html and "HTTP 200" in html
    assert "Redeliver" in html

    again = owner.post(f"{PAGE}{webhook.pk}/deliveries/{delivery.pk}/redeliver", headers=HX)
    assert again.status_code == 200
    assert WebhookDelivery.objects.filter(redelivery_of=delivery).count() == 1


def test_redeliver_of_a_pending_delivery_is_refused_inline(owner, scheduled) -> None:
    _add(owner)
    webhook = Webhook.objects.get()
    owner.post(f"{PAGE}{webhook.pk}/test", headers=HX)
    delivery = WebhookDelivery.objects.get()
    response = owner.post(f"{PAGE}{webhook.pk}/deliveries/{delivery.pk}/redeliver", headers=HX)
    assert response.status_code == 409
    assert "still pending" in response.content.decode()


def test_edit_rotate_and_delete(owner) -> None:
    _add(owner)
    webhook = Webhook.objects.get()
    old_secret = webhook.secret
    response = owner.post(
        f"{PAGE}{webhook.pk}/",
        {"url": "https://other.example/h", "events": ["label.moved"], "description": ""},
        headers=HX,
    )
    assert response.status_code == 200 and "Saved." in response.content.decode()
    webhook.refresh_from_db()
    assert webhook.url == "https://other.example/h" and webhook.events == ["label.moved"]
    assert webhook.enabled is False  # unchecked box

    bad = owner.post(f"{PAGE}{webhook.pk}/", {"url": "https://x.example/", "events": []})
    assert bad.status_code == 422 and "Choose at least one event" in bad.content.decode()

    rotated = owner.post(f"{PAGE}{webhook.pk}/secret", headers=HX)
    webhook.refresh_from_db()
    assert webhook.secret != old_secret and webhook.secret in rotated.content.decode()
    assert webhook.secret not in owner.get(f"{PAGE}{webhook.pk}/").content.decode()

    gone = owner.post(f"{PAGE}{webhook.pk}/delete")
    assert gone.status_code == 302 and gone["Location"] == PAGE
    assert not Webhook.objects.exists()


def test_squad_page_links_webhooks_for_owners_only(owner) -> None:
    assert PAGE in owner.get("/squads/acme/").content.decode()
    assert PAGE not in login("engineer").get("/squads/acme/").content.decode()


@pytest.mark.parametrize(("username", "status"), [("engineer", 403), ("outsider", 404)])
def test_others_are_refused(squad, username, status) -> None:
    client = login(username)
    assert client.get(PAGE).status_code == status
    assert _add(client).status_code == status
    assert not Webhook.objects.exists()


def test_admin_lists_without_the_secret(owner, scheduled) -> None:
    _add(owner)
    webhook = Webhook.objects.get()
    owner.post(f"{PAGE}{webhook.pk}/test", headers=HX)
    staff = Client()
    UserFactory(username="root", is_staff=True, is_superuser=True)
    assert staff.login(username="root", password=PASSWORD)
    page = staff.get(f"/admin/webhooks/webhook/{webhook.pk}/change/")
    assert page.status_code == 200 and webhook.secret not in page.content.decode()
    delivery = WebhookDelivery.objects.get()
    assert staff.get(f"/admin/webhooks/webhookdelivery/{delivery.pk}/change/").status_code == 200
    assert staff.get("/admin/webhooks/webhookdelivery/").status_code == 200


def test_admin_webhook_list_costs_the_same_however_many_creators(squad) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    staff = Client()
    staff.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))

    def add(username: str) -> None:
        Webhook.objects.create(
            squad=squad,
            url="https://example.com/h",
            events=["version.created"],
            secret="whsec_x",
            created_by=UserFactory(username=username),
        )

    add("creator0")
    with CaptureQueriesContext(connection) as one:
        assert staff.get("/admin/webhooks/webhook/").status_code == 200
    for n in range(1, 5):
        add(f"creator{n}")
    with CaptureQueriesContext(connection) as five:
        assert staff.get("/admin/webhooks/webhook/").status_code == 200
    assert len(five) == len(one)
