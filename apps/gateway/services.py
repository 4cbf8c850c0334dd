"""Service keys and quotas: every write, with its permission check and audit event.

`service_key_authenticate` turns a bearer secret into a `KeyGrant` (no Django objects,
cached like personal tokens; revocation and rotation drop the entry) that the gateway
(`apps.gateway.openai`) and the runtime prompt fetch (`apps.prompts.fast`) check scopes
against.
"""

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core.exceptions import AuthenticationFailed, ValidationFailed
from apps.core.memo import HOT, read_through
from apps.core.validation import clean_slug
from apps.gateway import quotas, response_cache
from apps.gateway.models import NAME_MAX, CacheRule, Quota, ServiceKey
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_GATEWAY

User = AbstractBaseUser
KEY_CACHE_TTL = 300
MAX_SCOPE_ITEMS = 200
MAX_OVERLAP_SECONDS = 30 * 24 * 3600
ALL = "*"


@dataclass(frozen=True)
class KeyGrant:
    """What an authenticated service key may do; built from the cached key entry."""

    key_id: int
    squad_id: int
    name: str
    allow_gateway: bool
    allow_prompt_fetch: bool
    targets: tuple[str, ...]
    prompts: tuple[str, ...]

    def may_use_target(self, name: str) -> bool:
        return ALL in self.targets or name in self.targets

    def may_use_prompt(self, slug: str) -> bool:
        return ALL in self.prompts or slug in self.prompts

    def may_fetch(self, squad_id: int, slug: str) -> bool:
        """The runtime fetch's check: this squad, the fetch scope, this prompt."""
        return self.allow_prompt_fetch and squad_id == self.squad_id and self.may_use_prompt(slug)


# --- validation --------------------------------------------------------------------------


def _clean_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed("Name must not be empty.", field="name")
    value = value.strip()
    if len(value) > NAME_MAX:
        raise ValidationFailed(
            f"Name is {len(value)} characters long; the limit is {NAME_MAX}.", field="name"
        )
    return value


def _clean_scope(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationFailed(f'{field} must be a list of names (or ["*"]).', field=field)
    if len(value) > MAX_SCOPE_ITEMS:
        raise ValidationFailed(
            f"{field} has {len(value)} entries; the limit is {MAX_SCOPE_ITEMS}.", field=field
        )
    cleaned: list[str] = []
    for i, item in enumerate(value):
        item = item.strip()
        if item != ALL:
            item = clean_slug(item, field=f"{field}[{i}]", limit=100)
        if item not in cleaned:
            cleaned.append(item)
    return cleaned


def _clean_expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is None:
        return None
    if timezone.is_naive(expires_at):
        raise ValidationFailed(
            "Expiry must include a time zone (for example 2030-01-01T00:00:00Z).",
            field="expires_at",
        )
    if expires_at <= timezone.now():
        raise ValidationFailed("Expiry must be in the future.", field="expires_at")
    return expires_at


def _secret() -> str:
    return ServiceKey.PREFIX + secrets.token_urlsafe(32)


def _audit_data(key: ServiceKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "key_prefix": key.key_prefix,
        "gateway": key.allow_gateway,
        "prompt_fetch": key.allow_prompt_fetch,
        "targets": key.targets,
        "prompts": key.prompts,
        "expires_at": key.expires_at,
    }


# --- keys --------------------------------------------------------------------------------


@transaction.atomic
def service_key_create(
    *,
    actor: User,
    squad: Squad,
    name: str,
    allow_gateway: bool = True,
    allow_prompt_fetch: bool = False,
    targets: list[str] | None = None,
    prompts: list[str] | None = None,
    expires_at: datetime | None = None,
    request: HttpRequest | None = None,
) -> tuple[ServiceKey, str]:
    """A new key of the squad (owners); returns it and the secret, shown only now."""
    require_squad_permission(actor, squad, MANAGE_GATEWAY)
    name = _clean_name(name)
    if not isinstance(allow_gateway, bool) or not isinstance(allow_prompt_fetch, bool):
        raise ValidationFailed("allow_gateway and allow_prompt_fetch are true or false.")
    if not (allow_gateway or allow_prompt_fetch):
        raise ValidationFailed(
            "A key needs at least one scope: allow_gateway or allow_prompt_fetch.",
            field="allow_gateway",
        )
    secret = _secret()
    key = ServiceKey.objects.create(
        squad=squad,
        name=name,
        key_prefix=secret[: len(ServiceKey.PREFIX) + 6],
        key_hash=ServiceKey.hash_key(secret),
        allow_gateway=allow_gateway,
        allow_prompt_fetch=allow_prompt_fetch,
        targets=_clean_scope(targets, "targets"),
        prompts=_clean_scope(prompts, "prompts"),
        created_by=actor,
        expires_at=_clean_expiry(expires_at),
    )
    audit_log(
        actor=actor,
        action="gateway.key_created",
        squad=squad,
        target=key,
        data=_audit_data(key),
        request=request,
    )
    return key, secret


@transaction.atomic
def service_key_revoke(
    *, actor: User, key: ServiceKey, request: HttpRequest | None = None
) -> ServiceKey:
    """Revoke at once (owners). Revoking twice is harmless."""
    require_squad_permission(actor, key.squad, MANAGE_GATEWAY)
    key = ServiceKey.objects.select_for_update().get(pk=key.pk)
    if key.revoked_at is not None:
        return key
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    service_key_forget(key.key_hash)
    audit_log(
        actor=actor,
        action="gateway.key_revoked",
        squad=key.squad,
        target=key,
        data={"name": key.name, "key_prefix": key.key_prefix},
        request=request,
    )
    return key


@transaction.atomic
def service_key_rotate(
    *,
    actor: User,
    key: ServiceKey,
    overlap_seconds: int = 3600,
    request: HttpRequest | None = None,
) -> tuple[ServiceKey, str]:
    """A new key with the same scopes and quota; the old one keeps working for
    `overlap_seconds` (0 = stops now), so applications can switch without downtime."""
    require_squad_permission(actor, key.squad, MANAGE_GATEWAY)
    if isinstance(overlap_seconds, bool) or not isinstance(overlap_seconds, int):
        raise ValidationFailed("overlap_seconds must be a whole number.", field="overlap_seconds")
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise ValidationFailed(
            f"overlap_seconds must be 0 to {MAX_OVERLAP_SECONDS} (30 days).",
            field="overlap_seconds",
        )
    old = ServiceKey.objects.select_for_update().get(pk=key.pk)
    if old.status != "active":
        raise ValidationFailed(f"Key '{old.name}' is {old.status}; only active keys rotate.")
    now = timezone.now()
    secret = _secret()
    new = ServiceKey.objects.create(
        squad_id=old.squad_id,
        name=old.name,
        key_prefix=secret[: len(ServiceKey.PREFIX) + 6],
        key_hash=ServiceKey.hash_key(secret),
        allow_gateway=old.allow_gateway,
        allow_prompt_fetch=old.allow_prompt_fetch,
        targets=old.targets,
        prompts=old.prompts,
        created_by=actor,
        expires_at=old.expires_at,
        rotated_from=old,
    )
    old_quota = Quota.objects.filter(service_key=old).first()
    if old_quota is not None:
        Quota.objects.create(
            squad_id=old.squad_id,
            service_key=new,
            requests_per_minute=old_quota.requests_per_minute,
            tokens_per_minute=old_quota.tokens_per_minute,
            budget_tokens=old_quota.budget_tokens,
            budget_cost=old_quota.budget_cost,
            budget_period=old_quota.budget_period,
        )
    until = now + timedelta(seconds=overlap_seconds)
    if old.expires_at is None or old.expires_at > until:
        old.expires_at = until
    if overlap_seconds == 0:
        old.revoked_at = now
    old.save(update_fields=["expires_at", "revoked_at"])
    service_key_forget(old.key_hash)
    audit_log(
        actor=actor,
        action="gateway.key_rotated",
        squad=key.squad,
        target=new,
        data={
            "name": new.name,
            "old_key_prefix": old.key_prefix,
            "new_key_prefix": new.key_prefix,
            "old_valid_until": old.expires_at,
        },
        request=request,
    )
    return new, secret


def _key_cache_key(key_hash: str) -> str:
    return f"gateway:key:{key_hash}"


def service_key_forget(*key_hashes: str) -> None:
    """Drop cached key entries: now and at commit."""
    keys = [_key_cache_key(h) for h in key_hashes]
    HOT.pop(*keys)
    if keys:
        cache.delete_many(keys)
        transaction.on_commit(lambda: cache.delete_many(keys))


def _key_entry(key_hash: str) -> dict[str, Any] | None:
    key = ServiceKey.objects.filter(key_hash=key_hash).first()
    if key is None:
        return None
    return {
        "key_id": key.pk,
        "squad_id": key.squad_id,
        "name": key.name,
        "revoked": key.revoked_at is not None,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "allow_gateway": key.allow_gateway,
        "allow_prompt_fetch": key.allow_prompt_fetch,
        "targets": tuple(key.targets),
        "prompts": tuple(key.prompts),
    }


def is_service_key(raw: str) -> bool:
    return raw.startswith(ServiceKey.PREFIX)


def service_key_authenticate(*, raw: str) -> KeyGrant:
    """The grant behind a service key secret, or AuthenticationFailed with the reason."""
    if not is_service_key(raw):
        raise AuthenticationFailed("Invalid service key.")
    key_hash = ServiceKey.hash_key(raw)
    cache_key = _key_cache_key(key_hash)
    entry = read_through(cache_key, lambda: _key_entry(key_hash), KEY_CACHE_TTL)
    if entry is None:
        raise AuthenticationFailed("Invalid service key.")
    now = timezone.now()
    if entry["revoked"]:
        raise AuthenticationFailed("Service key revoked.")
    if entry["expires_at"] is not None and entry["expires_at"] <= now:
        raise AuthenticationFailed("Service key expired.")
    last_used = entry["last_used_at"]
    if (
        last_used is None
        or (now - last_used).total_seconds() >= settings.STUDIO_TOKEN_LAST_USED_RESOLUTION
    ):
        ServiceKey.objects.filter(pk=entry["key_id"]).update(last_used_at=now)
        entry = {**entry, "last_used_at": now}
        cache.set(cache_key, entry, KEY_CACHE_TTL)
        HOT.set(cache_key, entry)
    return KeyGrant(
        key_id=entry["key_id"],
        squad_id=entry["squad_id"],
        name=entry["name"],
        allow_gateway=entry["allow_gateway"],
        allow_prompt_fetch=entry["allow_prompt_fetch"],
        targets=tuple(entry["targets"]),
        prompts=tuple(entry["prompts"]),
    )


# --- quotas ------------------------------------------------------------------------------

QUOTA_FIELDS = ("requests_per_minute", "tokens_per_minute", "budget_tokens", "budget_cost")
MAX_LIMIT = 2**53 - 1


def _clean_limit(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "budget_cost":
        if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
            raise ValidationFailed("budget_cost must be a number.", field=name)
        try:
            cost = Decimal(str(value))
        except InvalidOperation as exc:
            raise ValidationFailed("budget_cost must be a number.", field=name) from exc
        if not cost.is_finite() or cost < 0 or cost >= Decimal(10) ** 8:
            raise ValidationFailed("budget_cost must be 0 to 99999999.", field=name)
        return cost.quantize(Decimal("0.000001"))
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise ValidationFailed(f"{name} must be a whole number from 0 to {MAX_LIMIT}.", field=name)
    return value


@transaction.atomic
def quota_set(
    *,
    actor: User,
    squad: Squad,
    key: ServiceKey | None = None,
    budget_period: str = Quota.Period.DAY,
    request: HttpRequest | None = None,
    **limits: Any,
) -> Quota:
    """Set the squad's quota (no key) or one key's (owners). Unset limits = no limit."""
    require_squad_permission(actor, squad, MANAGE_GATEWAY)
    if key is not None and key.squad_id != squad.pk:
        raise ValidationFailed("That key belongs to another squad.", field="key")
    unknown = set(limits) - set(QUOTA_FIELDS)
    if unknown:
        raise ValidationFailed(f"Unknown quota fields: {', '.join(sorted(unknown))}.")
    if budget_period not in Quota.Period.values:
        raise ValidationFailed("budget_period must be 'day' or 'month'.", field="budget_period")
    values = {name: _clean_limit(name, limits.get(name)) for name in QUOTA_FIELDS}
    quota, _ = Quota.objects.select_for_update().get_or_create(
        squad=squad, service_key=key, defaults={"budget_period": budget_period}
    )
    for name, value in values.items():
        setattr(quota, name, value)
    quota.budget_period = budget_period
    quota.updated_at = timezone.now()
    quota.save()
    quotas.forget_limits(squad.pk)
    audit_log(
        actor=actor,
        action="gateway.quota_set",
        squad=squad,
        target=quota,
        data={
            "key": key.key_prefix if key else None,
            "budget_period": budget_period,
            **{k: (str(v) if isinstance(v, Decimal) else v) for k, v in values.items()},
        },
        request=request,
    )
    return quota


# --- response cache rules ------------------------------------------------------------------

MAX_CACHE_TTL = 7 * 24 * 3600


@transaction.atomic
def cache_rule_set(
    *,
    actor: User,
    squad: Squad,
    model: Any,
    ttl_seconds: Any,
    request: HttpRequest | None = None,
) -> CacheRule | None:
    """Cache a model's deterministic answers for `ttl_seconds` (owners); 0 stops caching."""
    require_squad_permission(actor, squad, MANAGE_GATEWAY)
    if not isinstance(model, str) or not model:
        raise ValidationFailed("model is a target name or 'prompt/<slug>'.", field="model")
    slug = model.removeprefix("prompt/")
    clean_slug(slug, field="model", limit=100)
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise ValidationFailed("ttl_seconds must be a whole number.", field="ttl_seconds")
    if not 0 <= ttl_seconds <= MAX_CACHE_TTL:
        raise ValidationFailed(
            f"ttl_seconds must be 0 to {MAX_CACHE_TTL} (7 days).", field="ttl_seconds"
        )
    rule = None
    if ttl_seconds == 0:
        CacheRule.objects.filter(squad=squad, model=model).delete()
    else:
        rule, _ = CacheRule.objects.update_or_create(
            squad=squad,
            model=model,
            defaults={"ttl_seconds": ttl_seconds, "updated_at": timezone.now()},
        )
    response_cache.forget_rules(squad.pk)
    audit_log(
        actor=actor,
        action="gateway.cache_rule_set",
        squad=squad,
        target=rule or squad,
        data={"model": model, "ttl_seconds": ttl_seconds},
        request=request,
    )
    return rule
