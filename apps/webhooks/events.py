"""The events Studio sends to webhooks, and `emit`, the one call that sends them.

Services call `emit` inside the transaction of the change the event reports: it
stores one WebhookDelivery per subscribed, enabled webhook of the squad and queues
the delivery task at commit, so a rolled-back change sends nothing.
"""

import json
import logging
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from apps.webhooks.models import Webhook, WebhookDelivery

log = logging.getLogger(__name__)

VERSION_CREATED = "version.created"
REVIEW_REQUESTED = "review.requested"
REVIEW_DECIDED = "review.decided"
LABEL_MOVED = "label.moved"
JOB_FINISHED = "job.finished"
ALERT_RAISED = "alert.raised"
WEBHOOK_TEST = "webhook.test"

# What a webhook may subscribe to. `webhook.test` is sent only by the test-send button,
# to the one webhook being tested.
SUBSCRIBABLE: tuple[str, ...] = (
    VERSION_CREATED,
    REVIEW_REQUESTED,
    REVIEW_DECIDED,
    LABEL_MOVED,
    JOB_FINISHED,
    ALERT_RAISED,
)
EVENTS: frozenset[str] = frozenset((*SUBSCRIBABLE, WEBHOOK_TEST))


def envelope(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """The JSON body receivers get: {"type", "timestamp", "data"}."""
    return {
        "type": event,
        "timestamp": timezone.now().isoformat(),
        # Normalise to what the JSON column gives back (dates, UUIDs, decimals as text).
        "data": json.loads(json.dumps(data, cls=DjangoJSONEncoder)),
    }


def emit(*, squad_id: int, event: str, data: dict[str, Any]) -> None:
    """Queue `event` for every enabled webhook of the squad subscribed to it.

    Call inside the transaction of the change: deliveries are rows of that transaction
    and their tasks are queued only when it commits. `data` holds ids, slugs, numbers,
    usernames and relative URLs — never secrets or prompt bodies.
    """
    if event not in EVENTS:
        raise ValueError(f"Unknown webhook event {event!r}; known: {sorted(EVENTS)}")
    hooks = [
        hook
        for hook in Webhook.objects.filter(squad_id=squad_id, enabled=True).only("id", "events")
        if event in hook.events
    ]
    if not hooks:
        return
    body = envelope(event, data)
    for hook in hooks:
        enqueue(webhook=hook, event=event, payload=body)


def enqueue(
    *,
    webhook: Webhook,
    event: str,
    payload: dict[str, Any],
    redelivery_of: WebhookDelivery | None = None,
) -> WebhookDelivery:
    """Store a delivery for one webhook and queue its first attempt at commit."""
    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        webhook=webhook,
        event=event,
        payload=payload,
        next_attempt_at=now,
        created_at=now,
        redelivery_of=redelivery_of,
        **({"event_id": redelivery_of.event_id} if redelivery_of is not None else {}),
    )
    transaction.on_commit(lambda: schedule(delivery.pk))
    return delivery


def schedule(delivery_id: int, countdown: float = 0) -> None:
    """Queue one attempt. A broker outage loses nothing: the row stays due and
    `webhooks_retry_due` (and the workers' sweeper) queue it again."""
    from apps.webhooks.tasks import deliver

    try:
        deliver.apply_async(args=[delivery_id], countdown=countdown)
    except Exception:  # the change is committed; never fail its caller
        log.exception("could not queue webhook delivery %s; the sweeper will", delivery_id)
