"""Every write to webhooks: owners only (MANAGE_WEBHOOKS), audited in the same transaction.

Targets may be any http(s) URL; in production private, loopback and link-local
addresses only when an allow-list names them (`apps.webhooks.targets`). Whoever can add
a webhook is a squad owner, who can already read everything the events carry. The audit
log records URLs with their credentials masked, and secrets are stored encrypted
(`apps.webhooks.vault`).
"""

from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core.exceptions import Conflict, ValidationFailed
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_WEBHOOKS
from apps.webhooks import events as ev
from apps.webhooks import vault
from apps.webhooks.models import Webhook, WebhookDelivery
from apps.webhooks.signing import secret_generate
from apps.webhooks.targets import check_url, mask_url

User = AbstractBaseUser
URL_MAX = 2000
DESCRIPTION_MAX = 200
WEBHOOKS_PER_SQUAD = 50
_url_validator = URLValidator(schemes=["http", "https"])


def clean_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise ValidationFailed("Enter the URL that receives the events.", field="url")
    if len(url) > URL_MAX:
        raise ValidationFailed(f"The URL is longer than {URL_MAX} characters.", field="url")
    if "\x00" in url:  # PostgreSQL text cannot hold it; URLValidator lets it through
        raise ValidationFailed("The URL contains a NUL character (\\x00).", field="url")
    try:
        _url_validator(url)
    except ValidationError as exc:
        raise ValidationFailed(
            "Enter a full http:// or https:// URL, e.g. https://example.com/hooks/studio.",
            field="url",
        ) from exc
    try:
        port = urlsplit(url).port  # raises on a port past 65535
    except ValueError:
        port = 0
    if port == 0:
        raise ValidationFailed("The URL's port must be a number from 1 to 65535.", field="url")
    check_url(url)
    return url


def clean_events(events: Any) -> list[str]:
    if not isinstance(events, list | tuple) or not all(isinstance(e, str) for e in events):
        raise ValidationFailed("Events must be a list of event names.", field="events")
    unknown = sorted({e for e in events if e not in ev.SUBSCRIBABLE})
    if unknown:
        raise ValidationFailed(
            f"Unknown event(s): {', '.join(unknown)}. Choose from: {', '.join(ev.SUBSCRIBABLE)}.",
            field="events",
        )
    if not events:
        raise ValidationFailed("Choose at least one event.", field="events")
    return [e for e in ev.SUBSCRIBABLE if e in events]


def clean_description(description: str) -> str:
    description = (description or "").strip()
    if "\x00" in description:  # PostgreSQL text cannot hold it
        raise ValidationFailed(
            "The description contains a NUL character (\\x00).", field="description"
        )
    if len(description) > DESCRIPTION_MAX:
        raise ValidationFailed(
            f"The description is {len(description)} characters long; the limit is "
            f"{DESCRIPTION_MAX}.",
            field="description",
        )
    return description


def _facts(webhook: Webhook, *, masked: bool = True) -> dict[str, Any]:
    """What the audit log records about a webhook: never its secret, and the URL with its
    credentials masked (`masked=False` only to compare before and after)."""
    return {
        "url": mask_url(webhook.url) if masked else webhook.url,
        "events": webhook.events,
        "enabled": webhook.enabled,
        "description": webhook.description,
    }


@transaction.atomic
def webhook_create(
    *,
    actor: User,
    squad: Squad,
    url: str,
    events: list[str],
    description: str = "",
    enabled: bool = True,
    request: HttpRequest | None = None,
) -> tuple[Webhook, str]:
    """Add a webhook; returns it with its signing secret (shown to the caller once)."""
    require_squad_permission(actor, squad, MANAGE_WEBHOOKS)
    url, events, description = clean_url(url), clean_events(events), clean_description(description)
    # The squad's row lock makes count-then-insert one step under concurrent creation.
    Squad.objects.select_for_update().filter(pk=squad.pk).first()
    if Webhook.objects.filter(squad=squad).count() >= WEBHOOKS_PER_SQUAD:
        raise Conflict(f"A squad has at most {WEBHOOKS_PER_SQUAD} webhooks.")
    secret = secret_generate()
    webhook = Webhook.objects.create(
        squad=squad,
        url=url,
        events=events,
        description=description,
        enabled=enabled,
        secret=secret,
        created_by=actor,
    )
    audit_log(
        actor=actor,
        action="webhook.created",
        squad=squad,
        target=webhook,
        data=_facts(webhook),
        request=request,
    )
    return webhook, secret


@transaction.atomic
def webhook_update(
    *,
    actor: User,
    webhook: Webhook,
    url: str | None = None,
    events: list[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    request: HttpRequest | None = None,
) -> Webhook:
    """Change what is given (None leaves a field as it is)."""
    require_squad_permission(actor, webhook.squad, MANAGE_WEBHOOKS)
    webhook = (
        Webhook.objects.select_for_update(of=("self",)).select_related("squad").get(pk=webhook.pk)
    )
    before, before_masked = _facts(webhook, masked=False), _facts(webhook)
    if url is not None:
        webhook.url = clean_url(url)
    if events is not None:
        webhook.events = clean_events(events)
    if description is not None:
        webhook.description = clean_description(description)
    if enabled is not None:
        webhook.enabled = bool(enabled)
    after = _facts(webhook, masked=False)
    changed = sorted(k for k in after if after[k] != before[k])
    if not changed:
        return webhook
    webhook.updated_at = timezone.now()
    webhook.save()
    audit_log(
        actor=actor,
        action="webhook.updated",
        squad=webhook.squad,
        target=webhook,
        data={
            "changed": changed,
            "before": {k: before_masked[k] for k in changed},
            **_facts(webhook),
        },
        request=request,
    )
    return webhook


@transaction.atomic
def webhook_secret_rotate(
    *, actor: User, webhook: Webhook, request: HttpRequest | None = None
) -> tuple[Webhook, str]:
    """Replace the signing secret at once (deliveries still owed are signed with the new
    one); returns the new secret, shown once."""
    require_squad_permission(actor, webhook.squad, MANAGE_WEBHOOKS)
    webhook = (
        Webhook.objects.select_for_update(of=("self",)).select_related("squad").get(pk=webhook.pk)
    )
    secret = secret_generate()
    webhook.secret = secret
    webhook.secret_rotated_at = webhook.updated_at = timezone.now()
    webhook.save(update_fields=["secret_encrypted", "secret_rotated_at", "updated_at"])
    audit_log(
        actor=actor,
        action="webhook.secret_rotated",
        squad=webhook.squad,
        target=webhook,
        data={"url": mask_url(webhook.url)},
        request=request,
    )
    return webhook, secret


@transaction.atomic
def webhook_delete(*, actor: User, webhook: Webhook, request: HttpRequest | None = None) -> None:
    """Remove the webhook with its delivery log; deliveries still owed are not sent."""
    require_squad_permission(actor, webhook.squad, MANAGE_WEBHOOKS)
    audit_log(
        actor=actor,
        action="webhook.deleted",
        squad=webhook.squad,
        target=webhook,
        data={**_facts(webhook), "deliveries": webhook.deliveries.count()},
        request=request,
    )
    webhook.delete()


@transaction.atomic
def webhook_test_send(
    *, actor: User, webhook: Webhook, request: HttpRequest | None = None
) -> WebhookDelivery:
    """Queue a `webhook.test` event to this webhook only (signed and retried like any)."""
    require_squad_permission(actor, webhook.squad, MANAGE_WEBHOOKS)
    if not webhook.enabled:
        raise Conflict("The webhook is disabled; enable it to send a test.", field="enabled")
    delivery = ev.enqueue(
        webhook=webhook,
        event=ev.WEBHOOK_TEST,
        payload=ev.envelope(
            ev.WEBHOOK_TEST,
            {
                "squad": webhook.squad.slug,
                "webhook": webhook.pk,
                "actor": actor.get_username(),
                "message": "Test event from Studio.",
            },
        ),
    )
    audit_log(
        actor=actor,
        action="webhook.test_sent",
        squad=webhook.squad,
        target=webhook,
        data={
            "url": mask_url(webhook.url),
            "delivery": delivery.pk,
            "event_id": str(delivery.event_id),
        },
        request=request,
    )
    return delivery


@transaction.atomic
def delivery_redeliver(
    *, actor: User, delivery: WebhookDelivery, request: HttpRequest | None = None
) -> WebhookDelivery:
    """Send a finished delivery again as a new delivery with the same payload and the same
    `webhook-id` (receivers that already handled it can recognise it)."""
    webhook = delivery.webhook
    require_squad_permission(actor, webhook.squad, MANAGE_WEBHOOKS)
    if not delivery.is_done:
        raise Conflict(f"Delivery {delivery.pk} is still {delivery.status}; wait for it to finish.")
    if not webhook.enabled:
        raise Conflict("The webhook is disabled; enable it to redeliver.", field="enabled")
    again = ev.enqueue(
        webhook=webhook, event=delivery.event, payload=delivery.payload, redelivery_of=delivery
    )
    audit_log(
        actor=actor,
        action="webhook.redelivered",
        squad=webhook.squad,
        target=webhook,
        data={"delivery": delivery.pk, "new_delivery": again.pk, "event": delivery.event},
        request=request,
    )
    return again


@transaction.atomic
def webhook_secrets_reencrypt() -> int:
    """Re-encrypt every stored signing secret with the first key of
    STUDIO_WEBHOOK_SECRET_KEYS (after a new key was put first); audited. Returns the
    number of webhooks. An operator's command (`manage.py webhook_secrets_rotate`):
    whoever runs it already holds the keys."""
    webhooks = list(Webhook.objects.select_for_update().only("id", "secret_encrypted"))
    for webhook in webhooks:
        webhook.secret_encrypted = vault.rotate(webhook.secret_encrypted)
    Webhook.objects.bulk_update(webhooks, ["secret_encrypted"], batch_size=500)
    audit_log(
        actor=None,
        action="webhook.secrets_reencrypted",
        data={"webhooks": len(webhooks)},
    )
    return len(webhooks)
