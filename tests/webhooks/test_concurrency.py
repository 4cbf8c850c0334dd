"""The same delivery's task running twice at once (a late-acked message redelivered while
the first worker still sends it): the row lock lets one of them claim the attempt."""

import threading

import pytest
from django.db import connection

from apps.webhooks import delivery as dl
from apps.webhooks import events, services
from apps.webhooks.models import WebhookDelivery
from tests.factories import UserFactory, make_squad


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_on_one_delivery_send_it_once(receiver, scheduled) -> None:
    server = receiver(200)
    owner = UserFactory(username="owner")
    squad = make_squad(owner=owner)
    services.webhook_create(actor=owner, squad=squad, url=server.url, events=["label.moved"])
    events.emit(squad_id=squad.pk, event="label.moved", data={"label": "production"})
    delivery = WebhookDelivery.objects.get()

    barrier = threading.Barrier(4)
    errors: list[Exception] = []

    def run() -> None:
        barrier.wait()
        try:
            dl.delivery_attempt(delivery_id=delivery.pk)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert delivery.attempts == 1
    assert len(server.requests) == 1
    assert delivery.attempt_log.count() == 1
