"""The optional exact-match response cache: deterministic calls only, per squad, TTL,
X-Studio-Cache hit|miss|bypass, one Generation per call (a hit costs nothing)."""

import pytest

from apps.gateway import services as gateway
from apps.generation.models import Generation
from apps.prompts import services as prompts
from tests.factories import UserFactory, make_squad
from tests.gateway.conftest import V1, make_key
from tests.generation.conftest import remote_target, text_prompt

pytestmark = pytest.mark.django_db
CALL = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def _rule(squad, model: str = "fake", ttl: int = 300) -> None:
    gateway.cache_rule_set(
        actor=UserFactory(username="owner"), squad=squad, model=model, ttl_seconds=ttl
    )


def test_deterministic_calls_hit_and_cost_nothing(squad, upstream):
    remote_target(squad, upstream.url)
    _rule(squad)
    client = V1(make_key(squad))
    first, second = client.chat(CALL), client.chat(CALL)
    assert first["X-Studio-Cache"] == "miss" and second["X-Studio-Cache"] == "hit"
    assert len(upstream.requests) == 1
    assert second.json()["choices"][0]["message"]["content"] == "echo: hi"
    hit = Generation.objects.get(pk=second["X-Studio-Generation-Id"])
    assert hit.status == "ok" and hit.cost == 0 and hit.input_tokens == 0
    assert hit.attempts[0] == {
        "target": "fake",
        "kind": "cache",
        "generation": int(first["X-Studio-Generation-Id"]),
        "finish_reason": "stop",
    }
    assert hit.provenance["output_sha256"]
    bypass = client.chat(CALL, **{"X-Studio-Cache": "bypass"})
    assert bypass["X-Studio-Cache"] == "bypass" and len(upstream.requests) == 2
    other = client.chat({**CALL, "messages": [{"role": "user", "content": "other"}]})
    assert other["X-Studio-Cache"] == "miss"


def test_sampled_calls_and_uncached_models_are_never_cached(squad, upstream):
    remote_target(squad, upstream.url)
    remote_target(squad, upstream.url, name="plain")
    _rule(squad)
    client = V1(make_key(squad))
    sampled = {**CALL, "temperature": 0.7}
    assert "X-Studio-Cache" not in client.chat(sampled)
    assert "X-Studio-Cache" not in client.chat(sampled)
    seeded = {**sampled, "seed": 3}
    client.chat(seeded)
    assert client.chat(seeded)["X-Studio-Cache"] == "hit"
    assert "X-Studio-Cache" not in client.chat({**CALL, "model": "plain"})
    assert "X-Studio-Cache" not in client.chat({**CALL, "stream": True})


def test_a_prompt_rule_follows_the_label_and_never_crosses_squads(squad, upstream):
    remote_target(squad, upstream.url)
    version = text_prompt(squad)
    owner = UserFactory(username="owner")
    prompts.label_move(actor=owner, template=version.template, name="staging", version=version)
    _rule(squad, "prompt/writer")
    client = V1(make_key(squad))
    body = {"model": "prompt/writer@staging", "variables": {"topic": "owls"}}
    assert client.chat(body)["X-Studio-Cache"] == "miss"  # the version sets temperature 0
    assert client.chat(body)["X-Studio-Cache"] == "hit"
    other = make_squad(owner=UserFactory(username="b-owner"), slug="beta")
    gateway.cache_rule_set(
        actor=UserFactory(username="b-owner"), squad=other, model="fake", ttl_seconds=300
    )
    from apps.generation import services as generation_services

    generation_services.model_target_create(
        actor=UserFactory(username="b-owner"),
        squad=other,
        name="fake",
        kind="remote",
        base_url=upstream.url,
    )
    client.chat(CALL)
    _, foreign = gateway.service_key_create(
        actor=UserFactory(username="b-owner"), squad=other, name="b", targets=["*"]
    )
    assert V1(foreign).chat(CALL)["X-Studio-Cache"] == "miss"


def test_cache_rules_are_validated_and_audited(squad, api_as):
    owner = api_as("owner")
    ok = owner.call(
        "PUT", "/api/v1/squads/acme/gateway/cache-rules", {"model": "local", "ttl_seconds": 60}
    )
    assert ok.status_code == 200 and ok.json()["ttl_seconds"] == 60
    listed = api_as("compliance").call("GET", "/api/v1/squads/acme/gateway/cache-rules")
    assert [r["model"] for r in listed.json()] == ["local"]
    gone = owner.call(
        "PUT", "/api/v1/squads/acme/gateway/cache-rules", {"model": "local", "ttl_seconds": 0}
    )
    assert gone.status_code == 204
    for body in ({"model": "a b", "ttl_seconds": 5}, {"model": "x", "ttl_seconds": 10**9}):
        assert owner.call("PUT", "/api/v1/squads/acme/gateway/cache-rules", body).status_code == 422
