"""Quotas that hold: per-minute requests and tokens, budgets, 429s as OpenAI sends them,
settle and release — and under 100 concurrent calls against a live server, exactly as
many succeed as the budget admits (on Redis + PostgreSQL and on the embedded default)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from apps.gateway import quotas
from apps.gateway import services as gateway
from apps.gateway.models import ServiceKey
from apps.generation.models import Generation
from tests.factories import UserFactory
from tests.gateway.conftest import V1, make_key
from tests.generation.conftest import remote_target
from tests.generation.fake_openai import FakeOpenAI

MESSAGES = [{"role": "user", "content": "x"}]
MAX_TOKENS = 8
# What one call reserves: the prompt's bound (1 byte + 8 per message + 8) + max_tokens.
RESERVED = quotas.estimate_prompt_tokens(MESSAGES) + MAX_TOKENS


def exact_usage(request):
    """An upstream that uses exactly what the gateway reserved, so nothing comes back at
    settle time and the budget admits a fixed number of calls however they interleave."""
    prompt = quotas.estimate_prompt_tokens(MESSAGES)
    return (
        200,
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": MAX_TOKENS,
                "total_tokens": prompt + MAX_TOKENS,
            },
        },
    )


def _call(client: V1):
    return client.chat({"model": "fake", "messages": MESSAGES, "max_tokens": MAX_TOKENS})


@pytest.mark.django_db
def test_requests_per_minute_refuse_with_retry_after_and_headers(squad, upstream):
    remote_target(squad, upstream.url)
    secret = make_key(squad)
    key = ServiceKey.objects.get()
    gateway.quota_set(
        actor=UserFactory(username="owner"),
        squad=squad,
        key=key,
        requests_per_minute=2,
        tokens_per_minute=1000,
    )
    client = V1(secret)
    first, second, third = _call(client), _call(client), _call(client)
    assert first.status_code == second.status_code == 200
    assert first["x-ratelimit-limit-requests"] == "2"
    assert first["x-ratelimit-remaining-requests"] == "1"
    assert second["x-ratelimit-remaining-requests"] == "0"
    assert int(first["x-ratelimit-remaining-tokens"]) == 1000 - RESERVED
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(third["Retry-After"]) <= 60
    assert Generation.objects.count() == 2
    # Another key of the squad is not held by this key's limit.
    assert _call(V1(make_key(squad))).status_code == 200


@pytest.mark.django_db
def test_budget_refuses_with_insufficient_quota(squad, upstream):
    remote_target(squad, upstream.url)
    gateway.quota_set(
        actor=UserFactory(username="owner"),
        squad=squad,
        budget_tokens=RESERVED + 5,
        budget_period="month",
    )
    client = V1(make_key(squad))
    assert _call(client).status_code == 200  # reserves RESERVED, settles 10 + 2
    second = _call(client)
    assert second.status_code == 429, second.content
    error = second.json()["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert int(second["Retry-After"]) > 60
    assert quotas.usage(squad.pk)["budget_tokens"] == 12  # settled to the real usage


@pytest.mark.django_db
def test_cost_budget_counts_at_the_targets_prices(squad, upstream):
    remote_target(squad, upstream.url)  # 0.5 in, 1.5 out per 1,000 tokens
    gateway.quota_set(actor=UserFactory(username="owner"), squad=squad, budget_cost="0.03")
    client = V1(make_key(squad))
    # Each call reserves 17 in + 8 out = 0.0205 and uses 10 in + 2 out = 0.008.
    assert _call(client).status_code == 200
    assert quotas.usage(squad.pk)["budget_cost"] == 8000  # millionths, after settle
    assert _call(client).status_code == 200  # 0.008 + 0.0205 fits in 0.03
    refused = _call(client)  # 0.016 + 0.0205 does not
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"


@pytest.mark.django_db
def test_reserve_is_all_or_nothing(squad):
    gateway.quota_set(actor=UserFactory(username="owner"), squad=squad, tokens_per_minute=100)
    quotas.reserve(squad_id=squad.pk, key_id=1, tokens=60, cost=0)
    with pytest.raises(quotas.QuotaRefused) as refused:
        quotas.reserve(squad_id=squad.pk, key_id=1, tokens=60, cost=0)
    assert refused.value.kind == "tokens" and refused.value.scope == "squad"
    used = quotas.usage(squad.pk)
    assert used["requests"] == 1 and used["tokens"] == 60  # the refused call added nothing
    assert quotas.usage(squad.pk, 1)["requests"] == 1


@pytest.mark.django_db(transaction=True)
def test_hundred_concurrent_calls_against_a_budget_of_ten(squad, gateway_server):
    with FakeOpenAI(exact_usage, delay=0.05) as server:
        remote_target(squad, server.url)
        secret = make_key(squad)
        gateway.quota_set(
            actor=UserFactory(username="owner"), squad=squad, budget_tokens=10 * RESERVED
        )
        start = threading.Barrier(100)

        def one(_: int) -> int:
            with httpx.Client(timeout=120) as client:
                start.wait()
                return client.post(
                    f"{gateway_server}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {secret}"},
                    json={"model": "fake", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
                ).status_code

        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=100) as pool:
            statuses = list(pool.map(one, range(100)))
    assert statuses.count(200) == 10, sorted(statuses)
    assert statuses.count(429) == 90
    spent = sum(g.input_tokens + g.output_tokens for g in Generation.objects.all())
    assert Generation.objects.count() == 10
    assert spent == quotas.usage(squad.pk)["budget_tokens"] <= 10 * RESERVED
    assert time.monotonic() - began < 120
