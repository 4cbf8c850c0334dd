"""Where webhooks may send (private addresses refused in production, at save time and at
delivery time), credentials in URLs masked in the audit log, and the per-squad limit
under concurrent creation."""

import ipaddress
import socket
import threading

import pytest
from django.db import connection

from apps.audit.models import AuditEvent
from apps.core.exceptions import ValidationFailed
from apps.webhooks import delivery as dl
from apps.webhooks import events, services, targets
from apps.webhooks.models import Webhook, WebhookDelivery
from tests.factories import UserFactory, make_squad

pytestmark = pytest.mark.django_db

SLACK = "https://hooks.slack.com/services/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"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (SLACK, "https://hooks.slack.com/services/T0A1B2C3D/B0E4F5G6H/***"),
        (
            "https://discord.com/api/webhooks/123456789012345678/"
            "aBcD-EfGh_IjKlMnOpQrStUvWxYz0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ012345",
            "https://discord.com/api/webhooks/123456789012345678/***",
        ),
        (
            "https://user:hunter2@receiver.example:8443/hook?token=s3cret&team=a",
            "https://***@receiver.example:8443/hook?token=***&team=***",
        ),
        ("https://receiver.example/hooks/studio", "https://receiver.example/hooks/studio"),
        ("https://receiver.example/h#frag-secret", "https://receiver.example/h#***"),
    ],
)
def test_mask_url_hides_the_credential_parts(url, masked) -> None:
    assert targets.mask_url(url) == masked


def test_token_in_url_is_stored_and_shown_but_audited_masked(squad, api_as) -> None:
    owner = api_as("owner")
    created = owner.call(
        "POST", "/api/v1/squads/acme/webhooks", {"url": SLACK, "events": ["label.moved"]}
    ).json()
    assert created["url"] == SLACK
    assert owner.call("GET", f"/api/v1/squads/acme/webhooks/{created['id']}").json()["url"] == SLACK
    new = SLACK.replace("Xk9vQ2", "Zz0000")
    patched = owner.call(
        "PATCH", f"/api/v1/squads/acme/webhooks/{created['id']}", {"url": new}
    ).json()
    assert patched["url"] == new  # a change of the secret part alone is still a change
    owner.call("POST", f"/api/v1/squads/acme/webhooks/{created['id']}/secret")
    owner.call("POST", f"/api/v1/squads/acme/webhooks/{created['id']}/test")
    owner.call("DELETE", f"/api/v1/squads/acme/webhooks/{created['id']}")
    logged = AuditEvent.objects.filter(action__startswith="webhook.").order_by("sequence")
    assert [e.action for e in logged] == [
        "webhook.created",
        "webhook.updated",
        "webhook.secret_rotated",
        "webhook.test_sent",
        "webhook.deleted",
    ]
    for event in logged:
        text = str(event.data)
        assert "Xk9vQ2" not in text and "Zz0000" not in text, (event.action, text)
        assert "hooks.slack.com/services/T0A1B2C3D/B0E4F5G6H/***" in text
    assert logged[1].data["changed"] == ["url"]


# --- private addresses ----------------------------------------------------------------


@pytest.fixture
def dns(monkeypatch):
    """dns["host"] = "10.0.0.5": what targets.resolve answers (one address per host)."""
    answers: dict[str, str] = {}

    def resolve(host: str, port: int) -> list[tuple]:
        if host in answers:
            address = answers[host]
        else:
            try:
                socket.inet_pton(socket.AF_INET, host)
                address = host
            except OSError:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(targets, "resolve", resolve)
    return answers


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "127.0.0.1", "10.1.2.3", "192.168.0.10", "0.0.0.0"]
)
def test_production_refuses_private_targets_when_saved(
    squad, settings, dns, address, make_webhook
) -> None:
    settings.STUDIO_WEBHOOK_BLOCK_PRIVATE = True
    dns["metadata.internal"] = address
    with pytest.raises(ValidationFailed) as refused:
        make_webhook(url="http://metadata.internal/latest/meta-data/")
    assert refused.value.field == "url" and address in refused.value.message
    with pytest.raises(ValidationFailed):
        make_webhook(url=f"http://{address}/hook")
    dns["receiver.example"] = "93.184.215.14"
    webhook, _ = make_webhook(url="https://receiver.example/hook")
    with pytest.raises(ValidationFailed):  # and when changed to one
        services.webhook_update(
            actor=UserFactory(username="owner"), webhook=webhook, url=f"http://{address}/x"
        )
    assert Webhook.objects.count() == 1


def test_allow_list_names_a_private_host_or_network(squad, settings, dns, make_webhook) -> None:
    settings.STUDIO_WEBHOOK_BLOCK_PRIVATE = True
    dns["hooks.internal"] = "10.0.0.5"
    dns["other.internal"] = "10.9.0.5"
    settings.STUDIO_WEBHOOK_ALLOWED_HOSTS = ["hooks.internal"]
    make_webhook(url="http://hooks.internal/studio")
    with pytest.raises(ValidationFailed):
        make_webhook(url="http://other.internal/studio")
    settings.STUDIO_WEBHOOK_ALLOWED_HOSTS = ["10.9.0.0/16"]
    make_webhook(url="http://other.internal/studio")


def test_unresolvable_host_is_refused_with_where(squad, settings, dns, make_webhook) -> None:
    settings.STUDIO_WEBHOOK_BLOCK_PRIVATE = True
    with pytest.raises(ValidationFailed) as refused:
        make_webhook(url="https://nowhere.invalid/hook")
    assert refused.value.field == "url" and "does not resolve" in refused.value.message


def test_development_default_accepts_internal_receivers(squad, make_webhook) -> None:
    make_webhook(url="http://127.0.0.1:9/hook")
    assert Webhook.objects.count() == 1


def _emit_one(django_capture_on_commit_callbacks) -> WebhookDelivery:
    from apps.squads.models import Squad

    with django_capture_on_commit_callbacks(execute=True):
        events.emit(squad_id=Squad.objects.get(slug="acme").pk, event="version.created", data={})
    return WebhookDelivery.objects.latest("id")


def test_dns_rebinding_after_save_is_refused_at_delivery(
    squad, settings, dns, receiver, scheduled, make_webhook, django_capture_on_commit_callbacks
) -> None:
    """The host resolved to a public address when saved; at delivery it answers with a
    private one (here: the local receiver). Nothing reaches it."""
    server = receiver(200)
    port = server.server.server_address[1]
    settings.STUDIO_WEBHOOK_BLOCK_PRIVATE = True
    dns["rebind.example"] = "93.184.215.14"
    make_webhook(url=f"http://rebind.example:{port}/hooks/studio")
    dns["rebind.example"] = "127.0.0.1"
    delivery = _emit_one(django_capture_on_commit_callbacks)
    dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert server.requests == []
    assert delivery.status == "retrying" and delivery.last_status_code is None
    assert "127.0.0.1, which webhooks may not reach" in delivery.last_error

    settings.STUDIO_WEBHOOK_ALLOWED_HOSTS = ["rebind.example"]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=None)
    dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and len(server.requests) == 1


# --- the per-squad limit under concurrency ------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_webhook_limit_holds_under_concurrent_creation() -> None:
    owner = UserFactory(username="owner")
    squad = make_squad(owner=owner)
    for i in range(services.WEBHOOKS_PER_SQUAD - 3):
        services.webhook_create(
            actor=owner, squad=squad, url=f"https://r.example/{i}", events=["label.moved"]
        )
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def create(n: int) -> None:
        barrier.wait()
        try:
            services.webhook_create(
                actor=owner, squad=squad, url=f"https://c.example/{n}", events=["label.moved"]
            )
            outcomes.append("created")
        except Exception as exc:  # the Conflict, or anything unexpected
            outcomes.append(type(exc).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["Conflict"] * 5 + ["created"] * 3
    assert Webhook.objects.filter(squad=squad).count() == services.WEBHOOKS_PER_SQUAD


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "::127.0.0.1",  # IPv4-compatible loopback
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "::ffff:10.0.0.1",  # IPv4-mapped private
    ],
)
def test_ipv6_forms_of_private_ipv4_addresses_are_refused(settings, address) -> None:
    settings.STUDIO_WEBHOOK_BLOCK_PRIVATE = True
    refused = targets.refused_addresses("receiver.example", [address])
    assert refused == [str(ipaddress.ip_address(address))]


def test_a_public_address_behind_nat64_is_allowed(settings) -> None:
    settings.STUDIO_WEBHOOK_BLOCK_PRIVATE = True
    assert targets.refused_addresses("receiver.example", ["64:ff9b::5db8:d822"]) == []


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("port", ["99999", "0", "65536"])
def test_a_port_outside_1_to_65535_is_a_422_on_url(squad, api_as, settings, block, port) -> None:
    settings.STUDIO_WEBHOOK_BLOCK_PRIVATE = block
    response = api_as("owner").call(
        "POST",
        "/api/v1/squads/acme/webhooks",
        {"url": f"https://example.com:{port}/", "events": ["label.moved"]},
    )
    assert response.status_code == 422, response.content
    assert "port" in response.content.decode()
    assert not Webhook.objects.exists()
