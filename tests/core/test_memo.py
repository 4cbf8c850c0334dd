"""The per-process memo in front of the shared cache (apps/core/memo.py)."""

import time

import pytest
from django.core.cache import cache

from apps.core.memo import HOT, ProcessMemo
from apps.prompts import services
from tests.factories import UserFactory
from tests.prompts.factories import make_prompt
from tests.reviews.factories import approve

BASE = "/api/v1/squads/acme/prompts"


def test_entries_expire(settings) -> None:
    settings.STUDIO_HOT_MEMO_SECONDS = 0.05
    memo = ProcessMemo()
    memo.set("k", {"v": 1})
    assert memo.get("k") == {"v": 1}
    time.sleep(0.06)
    assert memo.get("k") is None


def test_zero_seconds_turns_it_off(settings) -> None:
    settings.STUDIO_HOT_MEMO_SECONDS = 0
    memo = ProcessMemo()
    memo.set("k", 1)
    assert memo.get("k") is None


def test_size_is_bounded(settings) -> None:
    memo = ProcessMemo(max_entries=3)
    for i in range(5):
        memo.set(f"k{i}", i)
    assert memo.get("k4") == 4
    assert sum(memo.get(f"k{i}") is not None for i in range(5)) <= 3


@pytest.mark.django_db
def test_warm_fetch_skips_the_shared_cache_and_this_process_sees_moves_at_once(
    squad, api_as, monkeypatch
) -> None:
    owner = UserFactory(username="owner")
    template = make_prompt(squad, owner)
    approve(template.latest_version)
    services.label_move(
        actor=owner, template=template, name="production", version=template.latest_version
    )
    reader = api_as("viewer")
    assert reader.call("GET", f"{BASE}/support").json()["version"] == 1

    def no_shared_cache(*args, **kwargs):
        raise AssertionError("a warm fetch must not read the shared cache")

    with monkeypatch.context() as patched:
        patched.setattr(cache, "get", no_shared_cache)
        patched.setattr(cache, "get_many", no_shared_cache)
        assert reader.call("GET", f"{BASE}/support").json()["version"] == 1

    # A move made through this process drops the memo at once.
    v2 = services.prompt_version_create(
        actor=owner,
        template=template,
        messages=template.latest_version.messages,
        input_schema=template.latest_version.input_schema,
        commit_message="v2",
        model={"temperature": 0.3},
    )
    approve(v2)
    services.label_move(actor=owner, template=template, name="production", version=v2)
    assert reader.call("GET", f"{BASE}/support").json()["version"] == 2


@pytest.mark.django_db
def test_revoked_token_is_refused_at_once_in_this_process(squad, api_as) -> None:
    from apps.squads.models import ApiToken
    from apps.squads.services import api_token_revoke

    viewer = UserFactory(username="viewer")
    client = api_as("viewer")
    assert client.call("GET", "/api/v1/me").status_code == 200
    token = ApiToken.objects.filter(user=viewer).latest("created_at")
    api_token_revoke(actor=viewer, token=token)
    assert HOT.get(f"auth:token:{token.key_hash}") is None
    assert client.call("GET", "/api/v1/me").status_code == 401
