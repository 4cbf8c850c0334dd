"""The squad's gateway page: keys, quotas with live usage, recent calls and a snippet."""

from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from apps.core.exceptions import ApplicationError
from apps.core.views import form_error, parse_int
from apps.gateway import selectors, services
from apps.gateway.models import Quota
from apps.gateway.quotas import MICROS
from apps.generation.models import Generation
from apps.squads.access import has_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_GATEWAY
from apps.squads.selectors import squad_get_for_user

PAGE = "gateway/page.html"


def _context(request: HttpRequest, squad: Squad, **extra: Any) -> dict[str, Any]:
    key_id = parse_int(request.GET.get("key"), field="key", label="key")
    status = request.GET.get("status", "")
    if status not in Generation.Status.values:
        status = ""
    keys = list(selectors.service_key_list_for_user(user=request.user, squad=squad))
    quotas = {
        q.service_key_id: q for q in selectors.quota_list_for_user(user=request.user, squad=squad)
    }
    usage = selectors.key_usage(squad, [k for k in keys if k.status == "active"])
    calls = selectors.gateway_calls_for_user(
        user=request.user, squad=squad, key_id=key_id, status=status
    )
    hits = sum(1 for g in calls if g.attempts and g.attempts[0].get("kind") == "cache")
    return {
        "cache_hit_rate": f"{hits}/{len(calls)}" if calls else "no calls yet",
        "squad": squad,
        "keys": [{"key": k, "quota": quotas.get(k.pk), "usage": usage.get(k.pk)} for k in keys],
        "squad_quota": quotas.get(None),
        "cache_rules": selectors.cache_rule_list_for_user(user=request.user, squad=squad),
        "squad_usage": usage[None],
        # Counters hold cost in millionths; a person reads the amount.
        "squad_cost": f"{(Decimal(usage[None].get('budget_cost', 0)) / MICROS).normalize():f}",
        "calls": calls,
        "filter": {"key": key_id, "status": status},
        "statuses": Generation.Status.values,
        "periods": Quota.Period.values,
        "can_manage": has_squad_permission(request.user, squad, MANAGE_GATEWAY),
        "base_url": request.build_absolute_uri("/v1"),
        **extra,
    }


@login_required
@require_GET
def gateway_page(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    return render(request, PAGE, _context(request, squad_obj))


def _scope(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@login_required
@require_POST
def key_create(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    status, extra = 201, {}
    try:
        key, secret = services.service_key_create(
            actor=request.user,
            squad=squad_obj,
            name=request.POST.get("name", ""),
            allow_gateway=request.POST.get("allow_gateway") == "on",
            allow_prompt_fetch=request.POST.get("allow_prompt_fetch") == "on",
            targets=_scope(request.POST.get("targets", "")),
            prompts=_scope(request.POST.get("prompts", "")),
            request=request,
        )
        extra["created"] = {"key": key, "secret": secret}
    except ApplicationError as exc:
        status, extra["error"] = exc.status_code, form_error(exc)
    return render(request, PAGE, _context(request, squad_obj, **extra), status=status)


@login_required
@require_POST
def key_revoke(request: HttpRequest, squad: str, key_id: int) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    key = selectors.service_key_get_for_user(user=request.user, squad=squad_obj, key_id=key_id)
    services.service_key_revoke(actor=request.user, key=key, request=request)
    return render(request, PAGE, _context(request, squad_obj, notice=f"Key {key.name} revoked."))


@login_required
@require_POST
def key_rotate(request: HttpRequest, squad: str, key_id: int) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    key = selectors.service_key_get_for_user(user=request.user, squad=squad_obj, key_id=key_id)
    status, extra = 201, {}
    try:
        overlap = parse_int(
            request.POST.get("overlap_seconds") or "3600", field="overlap_seconds", label="Overlap"
        )
        new, secret = services.service_key_rotate(
            actor=request.user, key=key, overlap_seconds=overlap, request=request
        )
        extra["created"] = {"key": new, "secret": secret}
    except ApplicationError as exc:
        status, extra["error"] = exc.status_code, form_error(exc)
    return render(request, PAGE, _context(request, squad_obj, **extra), status=status)


@login_required
@require_POST
def quota_set(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    status, extra = 200, {}
    try:
        key_id = parse_int(request.POST.get("key") or None, field="key", label="Key")
        key = (
            selectors.service_key_get_for_user(user=request.user, squad=squad_obj, key_id=key_id)
            if key_id is not None
            else None
        )
        limits: dict[str, Any] = {}
        for name in ("requests_per_minute", "tokens_per_minute", "budget_tokens"):
            limits[name] = parse_int(
                request.POST.get(name) or None, field=name, label=name.replace("_", " ")
            )
        limits["budget_cost"] = request.POST.get("budget_cost") or None
        services.quota_set(
            actor=request.user,
            squad=squad_obj,
            key=key,
            budget_period=request.POST.get("budget_period", "day"),
            request=request,
            **limits,
        )
        extra["notice"] = "Quota saved."
    except ApplicationError as exc:
        status, extra["error"] = exc.status_code, form_error(exc)
    return render(request, PAGE, _context(request, squad_obj, **extra), status=status)


@login_required
@require_POST
def cache_rule_set(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    status, extra = 200, {}
    try:
        ttl = parse_int(request.POST.get("ttl_seconds"), field="ttl_seconds", label="TTL")
        services.cache_rule_set(
            actor=request.user,
            squad=squad_obj,
            model=request.POST.get("model", "").strip(),
            ttl_seconds=ttl if ttl is not None else 0,
            request=request,
        )
        extra["notice"] = "Cache rule saved."
    except ApplicationError as exc:
        status, extra["error"] = exc.status_code, form_error(exc)
    return render(request, PAGE, _context(request, squad_obj, **extra), status=status)
