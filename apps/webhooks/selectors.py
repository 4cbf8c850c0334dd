from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Prefetch, QuerySet

from apps.core.exceptions import NotFound, ValidationFailed
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_WEBHOOKS
from apps.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery

User = AbstractBaseUser | AnonymousUser
DELIVERIES_PAGE = 50


def webhook_list_for_user(*, user: User, squad: Squad) -> QuerySet[Webhook]:
    require_squad_permission(user, squad, MANAGE_WEBHOOKS)
    return Webhook.objects.filter(squad=squad).select_related("squad", "created_by").order_by("id")


def webhook_get_for_user(*, user: User, squad: Squad, webhook_id: int) -> Webhook:
    require_squad_permission(user, squad, MANAGE_WEBHOOKS)
    webhook = (
        Webhook.objects.filter(squad=squad, pk=webhook_id)
        .select_related("squad", "created_by")
        .first()
    )
    if webhook is None:
        raise NotFound(f"Webhook {webhook_id} not found.")
    return webhook


def delivery_list_for_user(
    *, user: User, webhook: Webhook, status: str = "", limit: int = DELIVERIES_PAGE
) -> list[WebhookDelivery]:
    """The most recent deliveries with their attempts (two queries)."""
    require_squad_permission(user, webhook.squad, MANAGE_WEBHOOKS)
    deliveries = WebhookDelivery.objects.filter(webhook=webhook)
    if status and status not in WebhookDelivery.Status.values:
        raise ValidationFailed(
            f"Unknown status {status!r}; use one of {', '.join(WebhookDelivery.Status.values)}.",
            field="status",
        )
    if status:
        deliveries = deliveries.filter(status=status)
    return list(
        deliveries.order_by("-created_at", "-id").prefetch_related(
            Prefetch("attempt_log", queryset=WebhookAttempt.objects.order_by("number"))
        )[: max(1, min(limit, 200))]
    )


def delivery_get_for_user(*, user: User, webhook: Webhook, delivery_id: int) -> WebhookDelivery:
    require_squad_permission(user, webhook.squad, MANAGE_WEBHOOKS)
    delivery = (
        WebhookDelivery.objects.filter(webhook=webhook, pk=delivery_id)
        .select_related("webhook__squad")
        .prefetch_related("attempt_log")
        .first()
    )
    if delivery is None:
        raise NotFound(f"Delivery {delivery_id} not found.")
    return delivery
