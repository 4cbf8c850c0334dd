"""Request budgets for the API: per bearer token and per client address.

Every request under /api/ counts against the budget of the address it comes from
(`client_ip`) and, when it carries `Authorization: Bearer …`, against the budget of that
token (keyed by the token's hash: a wrong token is counted too, so guessing costs the
same). Budgets are "requests/seconds" (`STUDIO_API_RATE_PER_TOKEN`,
`STUDIO_API_RATE_PER_ADDRESS`) in fixed windows counted in the shared cache — Redis in
production, so every web process and node shares one count; the file cache on one
machine. Past a budget the answer is 429 with `Retry-After` (seconds until the window
ends) and nothing else runs: no session, no database. Each web process adds its
requests to the shared count in small batches while a budget is far from used (see
`hit`), so a warm API call makes no cache round trip for its budgets.
"""

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.core.http import client_ip

API_PREFIX = "/api/"


@dataclass(frozen=True)
class Budget:
    requests: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.requests} requests per {self.seconds} s"


@lru_cache(maxsize=16)
def parse_budget(raw: str, setting: str) -> Budget | None:
    """ "600/60" → Budget(600, 60); "" or "off" → None (no limit)."""
    raw = (raw or "").strip()
    if raw.lower() in ("", "off"):
        return None
    count, sep, seconds = raw.partition("/")
    if not (sep and count.strip().isdecimal() and seconds.strip().isdecimal()):
        raise ImproperlyConfigured(f"{setting} must look like '200/10' (requests/seconds).")
    budget = Budget(int(count), int(seconds))
    if budget.requests < 1 or budget.seconds < 1:
        raise ImproperlyConfigured(f"{setting} needs at least 1 request and 1 second.")
    return budget


@dataclass(frozen=True)
class Refusal:
    scope: str
    budget: Budget
    retry_after: int


def _count(key: str, delta: int, timeout: int) -> int:
    """Add `delta` to the counter at `key` (created with `timeout` when missing); the total."""
    try:
        return cache.incr(key, delta)
    except ValueError:
        if cache.add(key, delta, timeout):
            return delta
        return cache.incr(key, delta)


def _now() -> float:
    return time.time()


@dataclass
class _Tally:
    """One budget's window as this process sees it."""

    window: int
    seen: int = 0  # the shared count as of this process's last addition to it
    pending: int = 0  # requests counted here, not yet added to the shared count


# Adding to the shared count costs a cache round trip (a locked file rewrite on the
# embedded default: ~2 ms; a Redis INCR: ~0.15 ms) — more than a whole warm API call.
# Each process therefore adds its requests in batches while a budget is far from used:
# at most BATCH_MAX requests and at most 1/BATCH_SHARE of what it believes is left.
# Near the budget every request is added at once, and a refusal is always decided on the
# shared count. With one web process the count is exact; with N, a window can admit at
# most N batches (each under 1/BATCH_SHARE of the budget) beyond it.
BATCH_MAX = 256
BATCH_SHARE = 16
_TALLIES_MAX = 10_000
_tallies: dict[tuple[str, str, int], _Tally] = {}
_tallies_lock = threading.Lock()


def hit(scope: str, ident: str, budget: Budget) -> Refusal | None:
    """Count one request of `ident` against `budget`; a Refusal when it is over."""
    now = _now()
    window = int(now // budget.seconds)
    slot = (scope, ident, budget.seconds)
    with _tallies_lock:
        tally = _tallies.get(slot)
        if tally is None or tally.window != window:
            if len(_tallies) >= _TALLIES_MAX:
                _forget_past_windows(now)
            tally = _tallies[slot] = _Tally(window)
        tally.pending += 1
        used = tally.seen + tally.pending
        if tally.pending > min(BATCH_MAX, (budget.requests - used) // BATCH_SHARE):
            tally.seen = _count(f"rl:{scope}:{ident}:{window}", tally.pending, budget.seconds + 5)
            tally.pending = 0
            used = tally.seen
    if used <= budget.requests:
        return None
    retry_after = max(1, math.ceil((window + 1) * budget.seconds - now))
    return Refusal(scope=scope, budget=budget, retry_after=retry_after)


def _forget_past_windows(now: float) -> None:
    """Drop tallies of windows that are over (their pending counts no longer matter);
    if that is not enough (a flood of distinct guessed tokens), drop them all."""
    for slot, tally in list(_tallies.items()):
        if tally.window != int(now // slot[2]):
            del _tallies[slot]
    if len(_tallies) >= _TALLIES_MAX:
        _tallies.clear()


def reset() -> None:
    """Forget this process's tallies (tests, after clearing the shared cache)."""
    with _tallies_lock:
        _tallies.clear()


def _bearer(request: HttpRequest) -> str | None:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        return None
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def check(request: HttpRequest) -> Refusal | None:
    """Count this API request against its budgets; the first one it exceeds, if any."""
    token_budget = parse_budget(settings.STUDIO_API_RATE_PER_TOKEN, "STUDIO_API_RATE_PER_TOKEN")
    address_budget = parse_budget(
        settings.STUDIO_API_RATE_PER_ADDRESS, "STUDIO_API_RATE_PER_ADDRESS"
    )
    refusals = []
    token = _bearer(request)
    if token is not None and token_budget is not None:
        refusals.append(hit("token", token, token_budget))
    address = client_ip(request)
    if address is not None and address_budget is not None:
        refusals.append(hit("address", address, address_budget))
    refused = [r for r in refusals if r is not None]
    return max(refused, key=lambda r: r.retry_after) if refused else None


def too_many(refusal: Refusal) -> HttpResponse:
    who = "this token" if refusal.scope == "token" else "this address"
    response = JsonResponse(
        {
            "detail": (
                f"Too many requests from {who}: the limit is {refusal.budget}. "
                f"Retry in {refusal.retry_after} s."
            ),
            "limit": refusal.scope,
        },
        status=429,
    )
    response["Retry-After"] = str(refusal.retry_after)
    return response


class ApiRateLimitMiddleware:
    """Applies `check` to every request under /api/ (the ninja API and the plain
    runtime-fetch view alike)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        # Fail at start-up, not on the first request, when a budget is malformed.
        parse_budget(settings.STUDIO_API_RATE_PER_TOKEN, "STUDIO_API_RATE_PER_TOKEN")
        parse_budget(settings.STUDIO_API_RATE_PER_ADDRESS, "STUDIO_API_RATE_PER_ADDRESS")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(API_PREFIX):
            refusal = check(request)
            if refusal is not None:
                return too_many(refusal)
        return self.get_response(request)
