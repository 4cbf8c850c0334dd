"""Reads of service keys, quotas and gateway usage; 404 for missing and forbidden alike."""

from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.db.models.query import QuerySet
from django.utils import timezone

from apps.core.exceptions import NotFound
from apps.gateway import quotas
from apps.gateway.models import CacheRule, Quota, ServiceKey
from apps.generation.models import Generation
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_GATEWAY

User = AbstractBaseUser | AnonymousUser


def service_key_list_for_user(*, user: User, squad: Squad) -> QuerySet[ServiceKey]:
    require_squad_permission(user, squad, VIEW_GATEWAY)
    return (
        ServiceKey.objects.filter(squad=squad)
        .select_related("squad", "created_by", "quota")
        .order_by("-created_at", "-id")
    )


def service_key_get_for_user(*, user: User, squad: Squad, key_id: int) -> ServiceKey:
    require_squad_permission(user, squad, VIEW_GATEWAY)
    key = (
        ServiceKey.objects.filter(squad=squad, pk=key_id)
        .select_related("squad", "created_by")
        .first()
    )
    if key is None:
        raise NotFound(f"Service key {key_id} not found.")
    return key


def quota_list_for_user(*, user: User, squad: Squad) -> list[Quota]:
    require_squad_permission(user, squad, VIEW_GATEWAY)
    return list(Quota.objects.filter(squad=squad).select_related("service_key").order_by("id"))


def gateway_usage_for_user(*, user: User, squad: Squad, days: int = 30) -> dict:
    """Spend against the quotas: this minute and period from the counters, and the
    recorded gateway calls by key, by prompt and by day (three grouped queries)."""
    require_squad_permission(user, squad, VIEW_GATEWAY)
    since = timezone.now() - timedelta(days=max(1, min(days, 366)))
    calls = Generation.objects.filter(
        squad=squad, source=Generation.Source.GATEWAY, created_at__gte=since
    )
    totals = {
        "calls": Count("id"),
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cost": Sum("cost"),
    }
    return {
        "squad": quotas.usage(squad.pk),
        "by_key": list(
            calls.values("service_key_id", "service_key__name")
            .annotate(**totals)
            .order_by("service_key_id")
        ),
        "by_prompt": list(
            calls.values("prompt_version__template__slug", "target__name")
            .annotate(**totals)
            .order_by("prompt_version__template__slug", "target__name")
        ),
        "by_day": list(
            calls.annotate(day=TruncDate("created_at"))
            .values("day")
            .annotate(**totals)
            .order_by("day")
        ),
    }


CALLS_PAGE = 50


def gateway_calls_for_user(
    *, user: User, squad: Squad, key_id: int | None = None, status: str = ""
) -> list[Generation]:
    """The squad's latest gateway calls (one query), optionally of one key or status."""
    require_squad_permission(user, squad, VIEW_GATEWAY)
    calls = Generation.objects.filter(squad=squad, source=Generation.Source.GATEWAY)
    if key_id is not None:
        calls = calls.filter(service_key_id=key_id)
    if status:
        calls = calls.filter(status=status)
    return list(
        calls.select_related("target", "prompt_version__template", "service_key").order_by(
            "-created_at", "-id"
        )[:CALLS_PAGE]
    )


def key_usage(squad: Squad, keys: list[ServiceKey]) -> dict[int | None, dict[str, int]]:
    """Live counters of the squad (key None) and of each key (call after a permission
    check: the page's selectors make it)."""
    usage: dict[int | None, dict[str, int]] = {None: quotas.usage(squad.pk)}
    for key in keys:
        usage[key.pk] = quotas.usage(squad.pk, key.pk)
    return usage


def cache_rule_list_for_user(*, user: User, squad: Squad) -> list[CacheRule]:
    require_squad_permission(user, squad, VIEW_GATEWAY)
    return list(CacheRule.objects.filter(squad=squad).order_by("model"))
