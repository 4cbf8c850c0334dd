"""Sending one delivery attempt, retries with backoff, and the sweeper for lost tasks.

Safe under late acks and duplicate tasks: an attempt is claimed under a row lock
(attempts + 1, `next_attempt_at` pushed past the HTTP timeout) before the request is
sent, so a redelivered or duplicate task finds the delivery not due, or done, and
does nothing. The HTTP request runs outside any transaction.
"""

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.webhooks import signing, targets
from apps.webhooks.events import schedule
from apps.webhooks.models import WebhookAttempt, WebhookDelivery

log = logging.getLogger(__name__)

# Wait before attempt 2, 3, ...; later attempts reuse the last step.
BACKOFF_SECONDS: tuple[int, ...] = (30, 120, 600, 3600, 6 * 3600)
MAX_ATTEMPTS_CAP = 10
EXCERPT_BYTES = 2048
# A task may arrive a little before its countdown by the database's clock.
EARLY_SLACK = timedelta(seconds=5)
USER_AGENT = "Studio-Webhooks/1"


def timeout_seconds() -> float:
    return float(getattr(settings, "STUDIO_WEBHOOK_TIMEOUT", 10))


def max_attempts() -> int:
    return max(1, min(int(getattr(settings, "STUDIO_WEBHOOK_MAX_ATTEMPTS", 6)), MAX_ATTEMPTS_CAP))


def backoff(attempts_made: int) -> int:
    """Seconds to wait after the `attempts_made`-th failed attempt."""
    return BACKOFF_SECONDS[min(attempts_made, len(BACKOFF_SECONDS)) - 1]


def _claim(delivery_id: int, now: datetime) -> tuple[WebhookDelivery, int] | None:
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(of=("self",))
            .select_related("webhook")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.is_done:
            return None
        if delivery.next_attempt_at and delivery.next_attempt_at > now + EARLY_SLACK:
            return None  # not due: another task owns this attempt
        if not delivery.webhook.enabled:
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.last_error = "The webhook was disabled before this attempt."
            delivery.next_attempt_at = None
            delivery.save(update_fields=["status", "last_error", "next_attempt_at"])
            return None
        if delivery.attempts >= max_attempts():
            # Every allowed attempt was claimed, the last without an outcome recorded (its
            # worker died or hit the time limit mid-request): give up instead of sending
            # again forever.
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.last_error = (
                f"No outcome was recorded for attempt {delivery.attempts} (the worker stopped "
                f"mid-request); {delivery.attempts} of {max_attempts()} attempts used."
            )
            delivery.next_attempt_at = None
            delivery.save(update_fields=["status", "last_error", "next_attempt_at"])
            return None
        delivery.attempts += 1
        # The lease: until then a duplicate task sees "not due"; after it (a worker died
        # mid-request) the sweeper queues the delivery again.
        delivery.next_attempt_at = now + timedelta(seconds=timeout_seconds() + 60)
        delivery.save(update_fields=["attempts", "next_attempt_at"])
        return delivery, delivery.attempts


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a new target: urllib would turn the POST into a GET."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class _CheckedHTTPConnection(http.client.HTTPConnection):
    """Connects only to addresses webhooks may reach, checked at connect time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = targets.connect


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = targets.connect


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_CheckedHTTPConnection, req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        options: dict[str, Any] = {"context": self._context}
        if hasattr(self, "_check_hostname"):  # Python 3.11
            options["check_hostname"] = self._check_hostname
        return self.do_open(_CheckedHTTPSConnection, req, **options)


# No proxy from the environment: the address check must apply to the receiver itself.
_opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _NoRedirect, _CheckedHTTPHandler, _CheckedHTTPSHandler
)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str, str]:
    """(status code or None, response excerpt, error). Only 2xx counts as delivered."""
    request = urllib.request.Request(
        url, data=body, headers={**headers, "User-Agent": USER_AGENT}, method="POST"
    )
    try:
        with _opener.open(request, timeout=timeout_seconds()) as response:
            return response.status, _excerpt(response.read(EXCERPT_BYTES)), ""
    except urllib.error.HTTPError as exc:
        return exc.code, _excerpt(exc.read(EXCERPT_BYTES)), f"HTTP {exc.code}"
    # http.client.HTTPException (a malformed status line, an over-long header, a body cut
    # short) is not an OSError; uncaught it would leave the attempt unrecorded.
    except (
        urllib.error.URLError,
        TimeoutError,
        OSError,
        ValueError,
        http.client.HTTPException,
    ) as exc:
        reason = getattr(exc, "reason", exc)
        error = f"{type(exc).__name__}: {reason}".replace("\x00", "\ufffd")
        return None, "", error[:500]


def _excerpt(raw: bytes) -> str:
    # NUL as U+FFFD too: PostgreSQL text cannot hold it, and the attempt must be recorded.
    return raw[:EXCERPT_BYTES].decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def delivery_attempt(*, delivery_id: int) -> WebhookDelivery | None:
    """Make the delivery's next attempt if it is due; record it; schedule the retry.

    Returns the delivery after the attempt, or None when there was nothing to do.
    """
    started = timezone.now()
    claimed = _claim(delivery_id, started)
    if claimed is None:
        return None
    delivery, number = claimed
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    sent_headers = signing.headers(
        secret=delivery.webhook.secret,
        msg_id=str(delivery.event_id),
        timestamp=int(time.time()),
        body=body,
    )
    clock = time.monotonic()
    status_code, excerpt, error = _post(delivery.webhook.url, body, sent_headers)
    duration_ms = int((time.monotonic() - clock) * 1000)
    ok = status_code is not None and 200 <= status_code < 300
    finished = timezone.now()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None:  # the webhook was deleted meanwhile
            return None
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=started,
            status_code=status_code,
            error=error,
            response_excerpt=excerpt,
            duration_ms=duration_ms,
        )
        delivery.last_status_code = status_code
        delivery.last_error = error
        delivery.response_excerpt = excerpt
        delivery.duration_ms = duration_ms
        if ok:
            delivery.status = WebhookDelivery.Status.SUCCEEDED
            delivery.delivered_at = finished
            delivery.next_attempt_at = None
        elif number >= max_attempts():
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.next_attempt_at = None
        else:
            wait = backoff(number)
            delivery.status = WebhookDelivery.Status.RETRYING
            delivery.next_attempt_at = finished + timedelta(seconds=wait)
            transaction.on_commit(lambda: schedule(delivery_id, countdown=wait))
        delivery.save()
    log.info(
        "webhook delivery %s attempt %s: %s %s",
        delivery_id,
        number,
        status_code,
        delivery.status,
    )
    return delivery


def deliveries_retry_due(*, limit: int = 500) -> list[int]:
    """Queue deliveries whose attempt is overdue (their task was lost: a broker outage at
    commit, a purged queue, a worker killed mid-request). Duplicates are harmless."""
    cutoff = timezone.now() - timedelta(seconds=60)
    ids = list(
        WebhookDelivery.objects.filter(
            status__in=[WebhookDelivery.Status.PENDING, WebhookDelivery.Status.RETRYING],
            next_attempt_at__lte=cutoff,
        )
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )
    for delivery_id in ids:
        schedule(delivery_id)
    return ids
