from django.http import HttpRequest
from ninja import Router, Status

from apps.gateway import selectors, services
from apps.gateway.models import Quota, ServiceKey
from apps.gateway.schemas import (
    CacheRuleIn,
    CacheRuleOut,
    GatewayUsageOut,
    QuotaIn,
    QuotaOut,
    ServiceKeyCreatedOut,
    ServiceKeyCreateIn,
    ServiceKeyOut,
    ServiceKeyRotateIn,
)
from apps.squads.selectors import squad_get_for_user

router = Router(tags=["gateway"])
KEYS = "/squads/{squad}/service-keys"


def key_out(key: ServiceKey) -> dict:
    return {
        "id": key.pk,
        "name": key.name,
        "key_prefix": key.key_prefix,
        "status": key.status,
        "allow_gateway": key.allow_gateway,
        "allow_prompt_fetch": key.allow_prompt_fetch,
        "targets": key.targets,
        "prompts": key.prompts,
        "created_by": key.created_by.get_username() if key.created_by else None,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
        "rotated_from": key.rotated_from_id,
    }


def quota_out(quota: Quota) -> dict:
    return {
        "key_id": quota.service_key_id,
        "requests_per_minute": quota.requests_per_minute,
        "tokens_per_minute": quota.tokens_per_minute,
        "budget_tokens": quota.budget_tokens,
        "budget_cost": quota.budget_cost,
        "budget_period": quota.budget_period,
        "updated_at": quota.updated_at,
    }


def _key(request: HttpRequest, squad: str, key_id: int) -> ServiceKey:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return selectors.service_key_get_for_user(user=request.auth, squad=squad_obj, key_id=key_id)


@router.get(KEYS, response=list[ServiceKeyOut])
def service_key_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return [
        key_out(k) for k in selectors.service_key_list_for_user(user=request.auth, squad=squad_obj)
    ]


@router.post(KEYS, response={201: ServiceKeyCreatedOut})
def service_key_create(request: HttpRequest, squad: str, payload: ServiceKeyCreateIn) -> Status:
    """Create a service key (owners). The response carries the key, shown only now."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    key, secret = services.service_key_create(
        actor=request.auth, squad=squad_obj, request=request, **payload.dict()
    )
    return Status(201, {**key_out(key), "secret": secret})


@router.post(KEYS + "/{key_id}/rotate", response={201: ServiceKeyCreatedOut})
def service_key_rotate(
    request: HttpRequest, squad: str, key_id: int, payload: ServiceKeyRotateIn
) -> Status:
    """A new key with the same scopes and quota; the old one works for `overlap_seconds`."""
    key, secret = services.service_key_rotate(
        actor=request.auth,
        key=_key(request, squad, key_id),
        overlap_seconds=payload.overlap_seconds,
        request=request,
    )
    return Status(201, {**key_out(key), "secret": secret})


@router.delete(KEYS + "/{key_id}", response=ServiceKeyOut)
def service_key_revoke(request: HttpRequest, squad: str, key_id: int) -> dict:
    key = services.service_key_revoke(
        actor=request.auth, key=_key(request, squad, key_id), request=request
    )
    return key_out(key)


@router.get("/squads/{squad}/gateway/quotas", response=list[QuotaOut])
def quota_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return [quota_out(q) for q in selectors.quota_list_for_user(user=request.auth, squad=squad_obj)]


@router.put("/squads/{squad}/gateway/quotas", response=QuotaOut)
def quota_set(request: HttpRequest, squad: str, payload: QuotaIn) -> dict:
    """Set the squad's quota, or one key's with `key_id` (owners). Omitted limits: none."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    data = payload.dict()
    key_id = data.pop("key_id")
    key = (
        selectors.service_key_get_for_user(user=request.auth, squad=squad_obj, key_id=key_id)
        if key_id is not None
        else None
    )
    quota = services.quota_set(
        actor=request.auth, squad=squad_obj, key=key, request=request, **data
    )
    return quota_out(quota)


@router.get("/squads/{squad}/gateway/usage", response=GatewayUsageOut)
def gateway_usage(request: HttpRequest, squad: str, days: int = 30) -> dict:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    usage = selectors.gateway_usage_for_user(user=request.auth, squad=squad_obj, days=days)
    return {
        "squad": usage["squad"],
        "by_key": [
            {**r, "key_id": r.pop("service_key_id"), "key_name": r.pop("service_key__name")}
            for r in usage["by_key"]
        ],
        "by_prompt": [
            {
                **r,
                "prompt": r.pop("prompt_version__template__slug"),
                "target": r.pop("target__name"),
            }
            for r in usage["by_prompt"]
        ],
        "by_day": usage["by_day"],
    }


@router.get("/squads/{squad}/gateway/cache-rules", response=list[CacheRuleOut])
def cache_rule_list(request: HttpRequest, squad: str) -> list:
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    return selectors.cache_rule_list_for_user(user=request.auth, squad=squad_obj)


@router.put("/squads/{squad}/gateway/cache-rules", response={200: CacheRuleOut, 204: None})
def cache_rule_set(request: HttpRequest, squad: str, payload: CacheRuleIn) -> Status:
    """Cache a model's deterministic answers for ttl_seconds (owners); 0 stops (204)."""
    squad_obj = squad_get_for_user(user=request.auth, slug=squad)
    rule = services.cache_rule_set(
        actor=request.auth, squad=squad_obj, request=request, **payload.dict()
    )
    return Status(200, rule) if rule is not None else Status(204, None)
