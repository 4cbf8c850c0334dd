"""Quotas that hold under concurrency: reserve before the upstream call, settle after.

Each call counts against two scopes, the squad and its key, and each scope has up to four
counters: requests this minute, tokens this minute, tokens this budget period, cost this
budget period (in millionths). `reserve` checks every limited counter and adds the
request's reservation (one request; prompt tokens estimated from above plus the request's
maximum output tokens; that at the target's prices) to all of them in one atomic step —
a Lua script in Redis, the file cache's lock on the embedded default — or adds nothing and
says which limit refused. `settle` moves the token and cost counters from the reservation
to the real usage; `release` gives the reservation back when the upstream call failed
(the request itself still counts against the per-minute request limit).

Because a reservation is never smaller than what the call can use (the estimate of the
prompt's tokens is its UTF-8 length: a byte-level BPE token covers at least one byte),
what is recorded never exceeds a budget, however many calls race for it.
"""

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any

from django.core.cache import cache

from apps.gateway.models import Quota

MINUTE = 60
MICROS = Decimal(1_000_000)
LIMITS_TTL = 300
_process_lock = threading.Lock()

# KEYS: counters. ARGV: then per counter: limit (-1: none), amount, ttl seconds.
# Returns {0, value after, ...} when every limit holds, else {i} (1-based) of the first
# counter the reservation would take past its limit; nothing is added then.
_RESERVE = """
local n = #KEYS
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 2])
  local amount = tonumber(ARGV[3 * i - 1])
  if limit >= 0 then
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if current + amount > limit then
      return {i}
    end
  end
end
local after = {0}
for i = 1, n do
  local value = redis.call('INCRBY', KEYS[i], ARGV[3 * i - 1])
  if redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
  end
  after[i + 1] = value
end
return after
"""
# KEYS: counters. ARGV: per counter: delta, ttl seconds.
_ADJUST = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[2 * i])
  end
end
return 0
"""


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_tokens: int | None = None
    budget_cost: Decimal | None = None
    budget_period: str = Quota.Period.DAY


@dataclass
class Counter:
    key: str
    limit: int | None
    amount: int
    ttl: int
    scope: str  # "squad" or "key"
    kind: str  # requests, tokens, budget_tokens, budget_cost
    reset_at: float


@dataclass
class Reservation:
    counters: list[Counter]
    tokens: int
    cost_micros: int
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False


@dataclass(frozen=True)
class QuotaRefused(Exception):
    scope: str
    kind: str
    limit: int
    retry_after: int

    @property
    def code(self) -> str:
        return "insufficient_quota" if self.kind.startswith("budget") else "rate_limit_exceeded"

    @property
    def message(self) -> str:
        who = "the squad" if self.scope == "squad" else "this key"
        what = {
            "requests": f"{self.limit} requests per minute",
            "tokens": f"{self.limit} tokens per minute",
            "budget_tokens": f"a budget of {self.limit} tokens",
            "budget_cost": f"a budget of {Decimal(self.limit) / MICROS} in cost",
        }[self.kind]
        return f"Quota exceeded: {who} is limited to {what}. Retry after {self.retry_after} s."


# --- limits --------------------------------------------------------------------------------


def _limits_key(squad_id: int) -> str:
    return f"gateway:limits:{squad_id}"


def forget_limits(squad_id: int) -> None:
    from django.db import transaction

    cache.delete(_limits_key(squad_id))
    transaction.on_commit(lambda: cache.delete(_limits_key(squad_id)))


def limits_for(squad_id: int, key_id: int) -> tuple[Limits | None, Limits | None]:
    """(squad limits, key limits), cached per squad; quota_set drops the entry."""
    entry = cache.get(_limits_key(squad_id))
    if entry is None:
        entry = {
            q.service_key_id: Limits(
                requests_per_minute=q.requests_per_minute,
                tokens_per_minute=q.tokens_per_minute,
                budget_tokens=q.budget_tokens,
                budget_cost=q.budget_cost,
                budget_period=q.budget_period,
            )
            for q in Quota.objects.filter(squad_id=squad_id)
        }
        cache.set(_limits_key(squad_id), entry, LIMITS_TTL)
    return entry.get(None), entry.get(key_id)


# --- estimates -----------------------------------------------------------------------------


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """An upper bound of the prompt's tokens: UTF-8 bytes, plus the chat template's
    markers (8 per message and 8 for the reply's header)."""
    return sum(len(m.get("content", "").encode()) + 8 for m in messages) + 8


def cost_of(tokens_in: int, tokens_out: int, price_in: Decimal, price_out: Decimal) -> Decimal:
    """At the target's prices per 1,000 tokens (as apps.generation.pipeline charges)."""
    return Decimal(tokens_in) / 1000 * price_in + Decimal(tokens_out) / 1000 * price_out


def micros(cost: Decimal) -> int:
    return int((cost * MICROS).to_integral_value(rounding=ROUND_CEILING))


# --- counters ------------------------------------------------------------------------------


def _period(period: str, now: float) -> tuple[str, float]:
    """(period id, its end as a timestamp) in UTC."""
    day = datetime.fromtimestamp(now, UTC)
    if period == Quota.Period.MONTH:
        start = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
        return start.strftime("m%Y%m"), end.timestamp()
    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.strftime("d%Y%m%d"), start.timestamp() + 86400


def _counters(
    scope: str, ident: str, limits: Limits | None, tokens: int, micros: int, now: float
) -> list[Counter]:
    limits = limits or Limits()
    minute = int(now // MINUTE)
    minute_end = (minute + 1) * MINUTE
    period_id, period_end = _period(limits.budget_period, now)
    period_ttl = int(period_end - now) + 120
    base = f"gateway:q:{scope}:{ident}"
    cost_limit = int(limits.budget_cost * MICROS) if limits.budget_cost is not None else None
    return [
        Counter(
            f"{base}:rpm:{minute}",
            limits.requests_per_minute,
            1,
            125,
            scope,
            "requests",
            minute_end,
        ),
        Counter(
            f"{base}:tpm:{minute}",
            limits.tokens_per_minute,
            tokens,
            125,
            scope,
            "tokens",
            minute_end,
        ),
        Counter(
            f"{base}:bt:{period_id}",
            limits.budget_tokens,
            tokens,
            period_ttl,
            scope,
            "budget_tokens",
            period_end,
        ),
        Counter(
            f"{base}:bc:{period_id}",
            cost_limit,
            micros,
            period_ttl,
            scope,
            "budget_cost",
            period_end,
        ),
    ]


def _atomic_reserve(counters: list[Counter]) -> tuple[int, list[int]]:
    """(0, values after) or (1-based index of the refusing counter, [])."""
    if hasattr(cache, "redis_client"):
        args: list[Any] = []
        for c in counters:
            args += [-1 if c.limit is None else c.limit, c.amount, c.ttl]
        keys = [cache.make_key(c.key) for c in counters]
        result = cache.redis_client().eval(_RESERVE, len(keys), *keys, *args)
        return int(result[0]), [int(v) for v in result[1:]]
    with _locked():
        values = [int(cache.get(c.key) or 0) for c in counters]
        for i, (c, value) in enumerate(zip(counters, values, strict=True), start=1):
            if c.limit is not None and value + c.amount > c.limit:
                return i, []
        after = []
        for c, value in zip(counters, values, strict=True):
            if c.amount:
                _set_keeping_expiry(c, value + c.amount)
            after.append(value + c.amount)
        return 0, after


def _atomic_adjust(pairs: list[tuple[Counter, int]]) -> None:
    pairs = [(c, d) for c, d in pairs if d]
    if not pairs:
        return
    if hasattr(cache, "redis_client"):
        args: list[Any] = []
        for c, delta in pairs:
            args += [delta, c.ttl]
        keys = [cache.make_key(c.key) for c, _ in pairs]
        cache.redis_client().eval(_ADJUST, len(keys), *keys, *args)
        return
    with _locked():
        for c, delta in pairs:
            _set_keeping_expiry(c, int(cache.get(c.key) or 0) + delta)


def _set_keeping_expiry(counter: Counter, value: int) -> None:
    # The counter's window ends at reset_at whenever it is written.
    cache.set(counter.key, value, max(1, int(counter.reset_at - time.time()) + 5))


class _locked:
    """The file cache's cross-process lock; a process lock for other local caches."""

    def __enter__(self) -> None:
        self._cm = cache.exclusive() if hasattr(cache, "exclusive") else _process_lock
        self._cm.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


def reserve(*, squad_id: int, key_id: int, tokens: int, cost: Decimal) -> Reservation:
    """Reserve one request, `tokens` tokens and `cost` against the squad's and the key's
    limits, or raise QuotaRefused (nothing reserved)."""
    now = time.time()
    cost_micros = micros(cost)
    squad_limits, key_limits = limits_for(squad_id, key_id)
    counters = _counters(
        "squad", str(squad_id), squad_limits, tokens, cost_micros, now
    ) + _counters("key", str(key_id), key_limits, tokens, cost_micros, now)
    refused, after = _atomic_reserve(counters)
    if refused:
        c = counters[refused - 1]
        raise QuotaRefused(
            scope=c.scope,
            kind=c.kind,
            limit=int(c.limit or 0),
            retry_after=max(1, math.ceil(c.reset_at - now)),
        )
    reservation = Reservation(counters=counters, tokens=tokens, cost_micros=cost_micros)
    reservation.headers = _headers(counters, after, now)
    return reservation


def _headers(counters: list[Counter], after: list[int], now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers from the tightest limited scope of each kind."""
    headers: dict[str, str] = {}
    for kind, name in (("requests", "requests"), ("tokens", "tokens")):
        limited = [
            (c.limit - value, c)
            for c, value in zip(counters, after, strict=True)
            if c.kind == kind and c.limit is not None
        ]
        if not limited:
            continue
        remaining, c = min(limited, key=lambda item: item[0])
        headers[f"x-ratelimit-limit-{name}"] = str(c.limit)
        headers[f"x-ratelimit-remaining-{name}"] = str(max(0, remaining))
        headers[f"x-ratelimit-reset-{name}"] = f"{max(0.0, c.reset_at - now):.0f}s"
    return headers


def settle(reservation: Reservation, *, tokens: int, cost: Decimal) -> None:
    """Replace the reservation by the real usage (once)."""
    if reservation.done:
        return
    reservation.done = True
    used_micros = micros(cost)
    pairs = []
    for c in reservation.counters:
        if c.kind in ("tokens", "budget_tokens"):
            pairs.append((c, tokens - reservation.tokens))
        elif c.kind == "budget_cost":
            pairs.append((c, used_micros - reservation.cost_micros))
    _atomic_adjust(pairs)


def release(reservation: Reservation) -> None:
    """Give back the tokens and cost of a call that did not reach the model (once)."""
    if reservation.done:
        return
    reservation.done = True
    _atomic_adjust(
        [
            (c, -c.amount)
            for c in reservation.counters
            if c.kind in ("tokens", "budget_tokens", "budget_cost")
        ]
    )


def usage(squad_id: int, key_id: int | None = None) -> dict[str, int]:
    """This minute's and this period's counts of the squad (or one key)."""
    scope, ident = ("key", str(key_id)) if key_id is not None else ("squad", str(squad_id))
    squad_limits, key_limits = limits_for(squad_id, key_id or 0)
    limits = key_limits if key_id is not None else squad_limits
    counters = _counters(scope, ident, limits, 0, 0, time.time())
    values = cache.get_many([c.key for c in counters])
    return {c.kind: int(values.get(c.key) or 0) for c in counters}
