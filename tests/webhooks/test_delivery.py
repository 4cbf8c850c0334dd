"""Delivery through a real local HTTP receiver: signatures, retries, the log, the sweeper."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.webhooks import delivery as dl
from apps.webhooks import events, signing
from apps.webhooks.models import WebhookDelivery


def _emit(django_capture_on_commit_callbacks, **data) -> WebhookDelivery:
    from apps.squads.models import Squad

    squad = Squad.objects.get(slug="acme")
    with django_capture_on_commit_callbacks(execute=True):
        events.emit(squad_id=squad.pk, event="version.created", data={"version": 2, **data})
    return WebhookDelivery.objects.latest("id")


def _make_due(delivery: WebhookDelivery) -> None:
    """What the backoff's countdown does in real life: time passes until the retry is due."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def test_receiver_verifies_what_studio_sends(
    make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    server = receiver(200)
    _, secret = make_webhook(url=server.url)
    delivery = _emit(django_capture_on_commit_callbacks, squad="acme")
    assert scheduled == [(delivery.pk, 0)]
    dl.delivery_attempt(delivery_id=delivery.pk)

    (got,) = server.requests
    assert got.path == "/hooks/studio"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == str(delivery.event_id)
    body = signing.verify(secret, got.headers, got.body)
    assert body["type"] == "version.created"
    assert body["data"] == {"version": 2, "squad": "acme"}
    assert "timestamp" in body
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(signing.secret_generate(), got.headers, got.body)
    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert delivery.attempts == 1
    assert delivery.last_status_code == 200
    assert delivery.response_excerpt == "answer 200"
    assert delivery.delivered_at is not None
    assert delivery.next_attempt_at is None


def test_500_then_200_retries_with_backoff_and_logs_both(
    make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    server = receiver(500, 200)
    _, secret = make_webhook(url=server.url)
    delivery = _emit(django_capture_on_commit_callbacks)

    with django_capture_on_commit_callbacks(execute=True):
        dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "retrying"
    assert delivery.attempts == 1
    assert delivery.last_status_code == 500
    assert delivery.last_error == "HTTP 500"
    assert delivery.response_excerpt == "answer 500"
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 25 < wait <= 30
    assert scheduled[-1] == (delivery.pk, 30)

    # The retry's task arriving early (or a duplicate) does nothing.
    assert dl.delivery_attempt(delivery_id=delivery.pk) is None
    assert len(server.requests) == 1

    _make_due(delivery)
    dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert delivery.attempts == 2
    log = list(delivery.attempt_log.values_list("number", "status_code", "error"))
    assert log == [(1, 500, "HTTP 500"), (2, 200, "")]
    # Same webhook-id on both attempts, each validly signed.
    assert {r.headers["webhook-id"] for r in server.requests} == {str(delivery.event_id)}
    for r in server.requests:
        signing.verify(secret, r.headers, r.body)


def test_gives_up_after_max_attempts(
    settings, make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    settings.STUDIO_WEBHOOK_MAX_ATTEMPTS = 3
    server = receiver(503)
    make_webhook(url=server.url)
    delivery = _emit(django_capture_on_commit_callbacks)
    countdowns = []
    for _ in range(3):
        _make_due(delivery)
        with django_capture_on_commit_callbacks(execute=True):
            dl.delivery_attempt(delivery_id=delivery.pk)
        countdowns.append(scheduled[-1][1])
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert delivery.attempts == 3
    assert delivery.next_attempt_at is None
    assert countdowns[:2] == [30, 120]
    assert len(scheduled) == 1 + 2  # the first attempt, then two retries, none after failing
    assert list(delivery.attempt_log.values_list("status_code", flat=True)) == [503] * 3
    _make_due(delivery)
    assert dl.delivery_attempt(delivery_id=delivery.pk) is None
    assert len(server.requests) == 3


def test_backoff_schedule_and_cap(settings) -> None:
    assert [dl.backoff(n) for n in range(1, 8)] == [30, 120, 600, 3600, 21600, 21600, 21600]
    settings.STUDIO_WEBHOOK_MAX_ATTEMPTS = 1000
    assert dl.max_attempts() == dl.MAX_ATTEMPTS_CAP
    settings.STUDIO_WEBHOOK_MAX_ATTEMPTS = 0
    assert dl.max_attempts() == 1


def test_unreachable_receiver_records_the_error(
    make_webhook, scheduled, django_capture_on_commit_callbacks
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_webhook(url=f"http://127.0.0.1:{port}/hook")
    delivery = _emit(django_capture_on_commit_callbacks)
    dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "retrying"
    assert delivery.last_status_code is None
    assert "refused" in delivery.last_error.lower()
    (attempt,) = delivery.attempt_log.all()
    assert attempt.status_code is None and attempt.error == delivery.last_error


def test_timeout_counts_as_a_failed_attempt(
    settings, make_webhook, scheduled, django_capture_on_commit_callbacks
) -> None:
    import socket

    settings.STUDIO_WEBHOOK_TIMEOUT = 0.3
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        make_webhook(url=f"http://127.0.0.1:{silent.getsockname()[1]}/hook")
        delivery = _emit(django_capture_on_commit_callbacks)
        dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "retrying"
    assert "timed out" in delivery.last_error.lower()


def test_long_response_is_cut_to_2_kb(
    make_webhook, scheduled, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    make_webhook()
    delivery = _emit(django_capture_on_commit_callbacks)
    monkeypatch.setattr(dl, "_post", lambda url, body, headers: (200, dl._excerpt(b"x" * 9000), ""))
    dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert len(delivery.response_excerpt) == 2048


def test_redelivered_task_of_a_claimed_attempt_does_not_double_count(
    make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    """Late ack: a worker dies after claiming an attempt; the broker hands the message to
    another worker, which finds the attempt leased and does nothing; the sweeper queues it
    again once the lease is over."""
    server = receiver(200)
    make_webhook(url=server.url)
    delivery = _emit(django_capture_on_commit_callbacks)
    assert dl._claim(delivery.pk, timezone.now()) is not None  # the worker that died
    assert dl.delivery_attempt(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.attempts == 1
    assert server.requests == []
    assert dl.deliveries_retry_due() == []  # lease still running

    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(minutes=5)
    )
    scheduled.clear()
    assert dl.deliveries_retry_due() == [delivery.pk]
    assert scheduled == [(delivery.pk, 0)]
    dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert delivery.attempts == 2
    assert list(delivery.attempt_log.values_list("number", flat=True)) == [2]


def test_sweeper_ignores_finished_and_not_yet_due(
    make_webhook, scheduled, django_capture_on_commit_callbacks
) -> None:
    make_webhook()
    delivery = _emit(django_capture_on_commit_callbacks)
    assert dl.deliveries_retry_due() == []  # due now, but its task was just queued
    old = timezone.now() - timedelta(hours=1)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="succeeded", next_attempt_at=old)
    assert dl.deliveries_retry_due() == []


def test_management_command_queues_overdue(
    make_webhook, scheduled, django_capture_on_commit_callbacks
) -> None:
    from io import StringIO

    from django.core.management import call_command

    make_webhook()
    delivery = _emit(django_capture_on_commit_callbacks)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(hours=1)
    )
    scheduled.clear()
    out = StringIO()
    call_command("webhooks_retry_due", stdout=out)
    assert scheduled == [(delivery.pk, 0)]
    assert "1" in out.getvalue()


def test_disabled_webhook_fails_its_pending_delivery(
    make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    server = receiver(200)
    webhook, _ = make_webhook(url=server.url)
    delivery = _emit(django_capture_on_commit_callbacks)
    type(webhook).objects.filter(pk=webhook.pk).update(enabled=False)
    assert dl.delivery_attempt(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert delivery.attempts == 0
    assert "disabled" in delivery.last_error
    assert server.requests == []


def test_broker_outage_at_commit_leaves_the_delivery_for_the_sweeper(
    make_webhook, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from apps.webhooks.tasks import deliver

    def down(*a, **kw):
        raise ConnectionError("broker down")

    monkeypatch.setattr(deliver, "apply_async", down)
    make_webhook()
    delivery = _emit(django_capture_on_commit_callbacks)  # does not raise
    assert delivery.status == "pending"
    assert delivery.next_attempt_at is not None


def test_workers_sweeper_queues_overdue_deliveries(
    make_webhook, scheduled, django_capture_on_commit_callbacks
) -> None:
    from apps.core.tasks import sweep_once

    make_webhook()
    delivery = _emit(django_capture_on_commit_callbacks)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(minutes=10)
    )
    scheduled.clear()
    sweep_once()
    assert scheduled == [(delivery.pk, 0)]


def test_task_is_named_routed_to_default_and_runs_the_attempt(
    make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    from apps.webhooks.tasks import deliver
    from studio.celery import app

    assert deliver.name == "apps.webhooks.tasks.deliver"
    assert deliver.name in app.tasks
    route = app.amqp.router.route({}, deliver.name)
    assert route["queue"].name == "default"
    assert deliver.acks_late is True

    server = receiver(200)
    make_webhook(url=server.url)
    delivery = _emit(django_capture_on_commit_callbacks)
    deliver(delivery.pk)  # what the worker calls
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and len(server.requests) == 1


def test_a_redirect_is_not_followed_and_counts_as_failed(
    make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    server = receiver(302)
    make_webhook(url=server.url)
    delivery = _emit(django_capture_on_commit_callbacks)
    dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "retrying" and delivery.last_status_code == 302
    assert len(server.requests) == 1


@pytest.mark.parametrize("garbage", [b"SSH-2.0-OpenSSH_9.6\r\n", b"\x00\x00binary\r\n"])
def test_a_receiver_answering_garbage_counts_as_a_failed_attempt(
    make_webhook, scheduled, django_capture_on_commit_callbacks, garbage
) -> None:
    """http.client's BadStatusLine is not an OSError: it must be recorded like any failure,
    not escape the task (no attempt logged, no backoff, never reaching max attempts)."""
    import socket
    import threading

    def answer(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(garbage)

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        thread = threading.Thread(target=answer, args=(server,), daemon=True)
        thread.start()
        make_webhook(url=f"http://127.0.0.1:{server.getsockname()[1]}/hook")
        delivery = _emit(django_capture_on_commit_callbacks)
        scheduled.clear()
        with django_capture_on_commit_callbacks(execute=True):
            dl.delivery_attempt(delivery_id=delivery.pk)
        thread.join(5)
    delivery.refresh_from_db()
    assert delivery.status == "retrying"
    assert delivery.last_status_code is None
    assert "BadStatusLine" in delivery.last_error
    assert "\x00" not in delivery.last_error  # PostgreSQL text cannot hold it
    (attempt,) = delivery.attempt_log.all()
    assert attempt.number == 1 and attempt.error == delivery.last_error
    assert scheduled == [(delivery.pk, dl.backoff(1))]


def test_attempts_that_never_recorded_an_outcome_still_count_towards_the_maximum(
    settings, make_webhook, receiver, scheduled, django_capture_on_commit_callbacks
) -> None:
    """A worker killed (or stopped by its time limit) mid-request leaves a claimed attempt
    without an outcome; the sweeper queues the delivery again after the lease. Once every
    allowed attempt was claimed, the delivery fails instead of being sent once more."""
    settings.STUDIO_WEBHOOK_MAX_ATTEMPTS = 2
    server = receiver(200)
    make_webhook(url=server.url)
    delivery = _emit(django_capture_on_commit_callbacks)
    for _ in range(2):  # two workers that died after claiming
        _make_due(delivery)
        assert dl._claim(delivery.pk, timezone.now()) is not None
    _make_due(delivery)
    assert dl.delivery_attempt(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert server.requests == []
    assert delivery.attempts == 2
    assert delivery.status == "failed"
    assert delivery.next_attempt_at is None
    assert "attempt 2" in delivery.last_error
    assert dl.deliveries_retry_due() == []


def test_nul_bytes_in_the_response_are_not_stored(
    make_webhook, scheduled, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    """PostgreSQL text cannot hold NUL: a receiver answering binary must not make the
    attempt's record fail (the delivery would never be marked delivered)."""
    make_webhook()
    delivery = _emit(django_capture_on_commit_callbacks)
    monkeypatch.setattr(
        dl, "_post", lambda url, body, headers: (200, dl._excerpt(b"ok\x00\x1f\x8b"), "")
    )
    dl.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert "\x00" not in delivery.response_excerpt
    assert delivery.response_excerpt.startswith("ok")
    assert "\x00" not in delivery.attempt_log.get().response_excerpt
