"""The optional exact-match response cache (per squad and model name, `CacheRule`).

Only deterministic, non-streaming calls are cached: temperature 0 or a seed. The key is
the sha256 of everything that decides the answer — the squad, the resolved prompt version
(a label move changes it) or target, the messages after the input policy, the parameters
and the output contract — under the squad's own prefix, so nothing is shared across
squads. A hit is still one Generation record (status ok, no tokens, no cost, the attempt
naming the generation it repeats), signed like any other. `X-Studio-Cache: bypass` on the
request skips the lookup (the fresh answer is stored again).
"""

import hashlib
import json
from typing import Any

from django.core.cache import cache

from apps.gateway.models import CacheRule

RULES_TTL = 300
BYPASS_HEADER = "X-Studio-Cache"


def _rules_key(squad_id: int) -> str:
    return f"gateway:cache-rules:{squad_id}"


def forget_rules(squad_id: int) -> None:
    from django.db import transaction

    cache.delete(_rules_key(squad_id))
    transaction.on_commit(lambda: cache.delete(_rules_key(squad_id)))


def ttl_for(squad_id: int, model: str) -> int:
    """The TTL for this model name of the squad (a prompt's rule is `prompt/<slug>`,
    whatever label or version the call names), 0 when it is not cached."""
    rules = cache.get(_rules_key(squad_id))
    if rules is None:
        rules = dict(
            CacheRule.objects.filter(squad_id=squad_id).values_list("model", "ttl_seconds")
        )
        cache.set(_rules_key(squad_id), rules, RULES_TTL)
    return int(rules.get(model, 0))


def deterministic(params: dict[str, Any]) -> bool:
    return float(params["temperature"]) == 0.0 or params.get("seed") is not None


def key_for(squad_id: int, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(
        json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str).encode()
    ).hexdigest()
    return f"gateway:cache:{squad_id}:{digest}"


def get(key: str) -> dict[str, Any] | None:
    return cache.get(key)


def put(key: str, entry: dict[str, Any], ttl: int) -> None:
    cache.set(key, entry, ttl)
