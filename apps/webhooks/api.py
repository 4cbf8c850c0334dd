from django.http import HttpRequest
from ninja import Router, Status

from apps.squads.selectors import squad_get_for_user
from apps.webhooks import selectors, services
from apps.webhooks.models import Webhook
from apps.webhooks.schemas import (
    DeliveryOut,
    WebhookCreatedOut,
    WebhookCreateIn,
    WebhookOut,
    WebhookSecretOut,
    WebhookUpdateIn,
)

router = Router(tags=["webhooks"])
BASE = "/squads/{squad}/webhooks"


def _webhook(request: HttpRequest, squad: str, webhook_id: int) -> Webhook:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return selectors.webhook_get_for_user(user=request.auth, squad=squad_obj, webhook_id=webhook_id)


def _out(webhook: Webhook) -> dict:
    return {
        "id": webhook.pk,
        "url": webhook.url,
        "description": webhook.description,
        "events": webhook.events,
        "enabled": webhook.enabled,
        "created_by": webhook.created_by.get_username() if webhook.created_by else None,
        "created_at": webhook.created_at,
        "updated_at": webhook.updated_at,
        "secret_rotated_at": webhook.secret_rotated_at,
    }


@router.get(BASE, response=list[WebhookOut])
def webhook_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return [_out(w) for w in selectors.webhook_list_for_user(user=request.auth, squad=squad_obj)]


@router.post(BASE, response={201: WebhookCreatedOut})
def webhook_create(request: HttpRequest, squad: str, payload: WebhookCreateIn) -> Status:
    """Add a webhook (owners). The response carries the signing secret, shown only now."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    webhook, secret = services.webhook_create(
        actor=request.auth, squad=squad_obj, request=request, **payload.dict()
    )
    return Status(201, {**_out(webhook), "secret": secret})


@router.get(BASE + "/{webhook_id}", response=WebhookOut)
def webhook_detail(request: HttpRequest, squad: str, webhook_id: int) -> dict:
    return _out(_webhook(request, squad, webhook_id))


@router.patch(BASE + "/{webhook_id}", response=WebhookOut)
def webhook_update(
    request: HttpRequest, squad: str, webhook_id: int, payload: WebhookUpdateIn
) -> dict:
    webhook = services.webhook_update(
        actor=request.auth,
        webhook=_webhook(request, squad, webhook_id),
        request=request,
        **payload.dict(exclude_unset=True),
    )
    return _out(webhook)


@router.delete(BASE + "/{webhook_id}", response={204: None})
def webhook_delete(request: HttpRequest, squad: str, webhook_id: int) -> Status:
    services.webhook_delete(
        actor=request.auth, webhook=_webhook(request, squad, webhook_id), request=request
    )
    return Status(204, None)


@router.post(BASE + "/{webhook_id}/secret", response=WebhookSecretOut)
def webhook_secret_rotate(request: HttpRequest, squad: str, webhook_id: int) -> dict:
    """Replace the signing secret at once; the new one is in the response, shown only now."""
    webhook, secret = services.webhook_secret_rotate(
        actor=request.auth, webhook=_webhook(request, squad, webhook_id), request=request
    )
    return {"id": webhook.pk, "secret": secret, "secret_rotated_at": webhook.secret_rotated_at}


@router.post(BASE + "/{webhook_id}/test", response={202: DeliveryOut})
def webhook_test_send(request: HttpRequest, squad: str, webhook_id: int) -> Status:
    """Queue a signed `webhook.test` event to this webhook; follow it in its deliveries."""
    delivery = services.webhook_test_send(
        actor=request.auth, webhook=_webhook(request, squad, webhook_id), request=request
    )
    return Status(202, delivery)


@router.get(BASE + "/{webhook_id}/deliveries", response=list[DeliveryOut])
def delivery_list(
    request: HttpRequest, squad: str, webhook_id: int, status: str = "", limit: int = 50
) -> list:
    """The most recent deliveries (newest first) with every attempt's status code."""
    return selectors.delivery_list_for_user(
        user=request.auth, webhook=_webhook(request, squad, webhook_id), status=status, limit=limit
    )


@router.get(BASE + "/{webhook_id}/deliveries/{delivery_id}", response=DeliveryOut)
def delivery_detail(request: HttpRequest, squad: str, webhook_id: int, delivery_id: int):
    return selectors.delivery_get_for_user(
        user=request.auth, webhook=_webhook(request, squad, webhook_id), delivery_id=delivery_id
    )


@router.post(BASE + "/{webhook_id}/deliveries/{delivery_id}/redeliver", response={202: DeliveryOut})
def delivery_redeliver(request: HttpRequest, squad: str, webhook_id: int, delivery_id: int):
    """Send a finished delivery again (same payload, same webhook-id)."""
    webhook = _webhook(request, squad, webhook_id)
    delivery = selectors.delivery_get_for_user(
        user=request.auth, webhook=webhook, delivery_id=delivery_id
    )
    return Status(
        202, services.delivery_redeliver(actor=request.auth, delivery=delivery, request=request)
    )
