"""API budgets per token and per address: 429 with Retry-After past them, counted in the
shared cache (the embedded file cache here; Redis when CACHE_URL points at it)."""

import multiprocessing

import pytest

from apps.core import ratelimit
from studio.cache import StudioFileBasedCache
from studio.settings import base as real_settings

pytestmark = pytest.mark.django_db

WINDOW_START = 1_800_000_000.0


@pytest.fixture
def clock(monkeypatch):
    """Time stands still 0.25 s into a window (of any length dividing WINDOW_START)."""
    now = {"t": WINDOW_START + 0.25}
    monkeypatch.setattr(ratelimit, "_now", lambda: now["t"])
    return now


def test_token_budget_with_the_real_default(squad, api_as, settings, clock) -> None:
    """The limit as shipped (studio/settings/base.py, not the test settings' raised one)."""
    settings.STUDIO_API_RATE_PER_TOKEN = real_settings.STUDIO_API_RATE_PER_TOKEN
    budget = ratelimit.parse_budget(settings.STUDIO_API_RATE_PER_TOKEN, "x")
    assert budget is not None and budget.requests <= 1000
    client = api_as("viewer")
    for _ in range(budget.requests):
        assert client.call("GET", "/api/v1/me").status_code == 200
    refused = client.call("GET", "/api/v1/me")
    assert refused.status_code == 429
    assert refused["Retry-After"] == str(budget.seconds)  # 0.25 s into the window
    assert refused.json()["limit"] == "token"
    assert f"{budget.requests} requests per {budget.seconds} s" in refused.json()["detail"]
    # Another token from the same address still has its own budget.
    assert api_as("owner").call("GET", "/api/v1/me").status_code == 200
    # The next window starts afresh.
    clock["t"] += budget.seconds
    assert client.call("GET", "/api/v1/me").status_code == 200


def test_address_budget_with_the_real_default(client, settings, clock) -> None:
    """Unauthenticated callers (token guessing, no token at all) are held by address."""
    settings.STUDIO_API_RATE_PER_ADDRESS = real_settings.STUDIO_API_RATE_PER_ADDRESS
    budget = ratelimit.parse_budget(settings.STUDIO_API_RATE_PER_ADDRESS, "x")
    assert budget is not None and budget.requests <= 2000
    for n in range(budget.requests):
        # A different (wrong) token each time: per-token budgets do not help a guesser.
        response = client.get("/api/v1/me", headers={"Authorization": f"Bearer stu_guess{n}"})
        assert response.status_code == 401
    refused = client.get("/api/v1/me", headers={"Authorization": "Bearer stu_guess-last"})
    assert refused.status_code == 429 and refused.json()["limit"] == "address"
    assert int(refused["Retry-After"]) == budget.seconds
    other = client.get("/api/v1/me", REMOTE_ADDR="10.9.8.7")
    assert other.status_code == 401  # another address is not held


def test_runtime_fetch_and_every_api_path_count(squad, api_as, settings, clock) -> None:
    settings.STUDIO_API_RATE_PER_TOKEN = "3/60"
    client = api_as("viewer")
    codes = [
        client.call("GET", "/api/v1/squads/acme/prompts/missing").status_code for _ in range(4)
    ]
    assert codes == [404, 404, 404, 429]
    assert client.call("POST", "/api/v1/squads/acme/prompts/check", {}).status_code == 429


def test_pages_are_not_counted(squad, settings, clock) -> None:
    settings.STUDIO_API_RATE_PER_ADDRESS = "2/60"
    from django.test import Client

    browser = Client()
    assert {browser.get("/login/").status_code for _ in range(5)} == {200}


@pytest.mark.parametrize("raw", ["200", "a/10", "0/10", "10/0", "10/-1"])
def test_malformed_budget_is_a_configuration_error(raw) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="STUDIO_API_RATE_PER_TOKEN"):
        ratelimit.parse_budget(raw, "STUDIO_API_RATE_PER_TOKEN")
    assert ratelimit.parse_budget("off", "x") is None
    assert ratelimit.parse_budget("", "x") is None


def _count_many(directory: str, n: int) -> None:
    cache = StudioFileBasedCache(directory, {})
    for _ in range(n):
        try:
            cache.incr("counter")
        except ValueError:
            if not cache.add("counter", 1, 60):
                cache.incr("counter")


def test_file_cache_counts_every_hit_across_processes(tmp_path) -> None:
    """Django's file cache reads then writes: four processes counting at once lose
    counts. The locked one keeps every one."""
    workers = [
        multiprocessing.get_context("fork").Process(target=_count_many, args=(str(tmp_path), 150))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert StudioFileBasedCache(str(tmp_path), {}).get("counter") == 600


def test_file_cache_incr_keeps_the_expiry(tmp_path) -> None:
    import time

    cache = StudioFileBasedCache(str(tmp_path), {"TIMEOUT": 300})
    cache.add("k", 1, 3600)
    cache.incr("k")
    path = cache._key_to_file("k")
    import pickle

    with open(path, "rb") as f:
        expiry = pickle.load(f)
    assert expiry > time.time() + 3000  # not reset to the 300 s default


def test_counts_are_batched_far_from_the_budget_and_exact_near_it(settings, clock) -> None:
    """One process decides exactly (its own pending requests plus the shared count) while
    adding to the shared count only every few requests."""
    from django.core.cache import cache

    budget = ratelimit.Budget(100, 60)
    window = int(clock["t"] // 60)
    key = f"rl:token:t1:{window}"
    results = [ratelimit.hit("token", "t1", budget) for _ in range(100)]
    assert results == [None] * 100
    assert cache.get(key) == 100  # near the budget every request was added at once
    refused = ratelimit.hit("token", "t1", budget)
    assert refused is not None and refused.retry_after == 60
    ratelimit.reset()
    cache.clear()
    for _ in range(3):
        assert ratelimit.hit("token", "t2", budget) is None
    assert cache.get(f"rl:token:t2:{window}") is None  # a batch pending in this process
    for _ in range(5):
        assert ratelimit.hit("token", "t2", budget) is None
    # Added once the batch outgrew a sixteenth of what is left: 6 > (100 - 6) // 16.
    assert cache.get(f"rl:token:t2:{window}") == 6


def test_other_processes_counts_are_honoured_within_one_batch(settings, clock) -> None:
    """Requests another web process added to the shared count hold this one too: it
    admits at most one batch (1/BATCH_SHARE of the budget) before it sees them."""
    from django.core.cache import cache

    budget = ratelimit.Budget(200, 60)
    window = int(clock["t"] // 60)
    cache.set(f"rl:token:busy:{window}", 200, 65)  # another process used the budget
    admitted = 0
    while ratelimit.hit("token", "busy", budget) is None:
        admitted += 1
        assert admitted <= 200
    assert admitted <= 200 // ratelimit.BATCH_SHARE
