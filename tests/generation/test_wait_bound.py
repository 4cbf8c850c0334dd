"""POST …/generate with "wait": true holds a web worker: only
STUDIO_GENERATE_MAX_WAITING calls may wait at once (apps/core/waits.py)."""

import pytest

from apps.core.waits import WaitRefused, wait_slot
from apps.generation.models import Generation
from tests.generation.conftest import remote_target, text_prompt

pytestmark = pytest.mark.django_db
GENERATE = "/api/v1/squads/acme/prompts/writer/generate"


def test_slots_are_bounded_and_freed():
    with wait_slot("t", limit=2, seconds=30), wait_slot("t", limit=2, seconds=30):
        with pytest.raises(WaitRefused) as info, wait_slot("t", limit=2, seconds=30):
            pass
        assert info.value.status_code == 429
        assert 1 <= info.value.retry_after <= 30
    with wait_slot("t", limit=2, seconds=30):
        pass  # both were given back


def test_a_waiting_call_past_the_bound_is_a_429_and_queues_nothing(
    squad, fake_server, api_as, settings
):
    settings.STUDIO_GENERATE_MAX_WAITING = 1
    remote_target(squad, fake_server.url)
    text_prompt(squad)
    engineer = api_as("engineer")
    body = {"variables": {"topic": "tides"}, "wait": True, "timeout": 20}
    with wait_slot("generate", limit=1, seconds=20):  # another request is waiting
        refused = engineer.call("POST", GENERATE, body)
        assert refused.status_code == 429
        assert 1 <= int(refused["Retry-After"]) <= 20
        assert "STUDIO_GENERATE_MAX_WAITING" in refused.json()["detail"]
        assert Generation.objects.count() == 0
        queued = engineer.call("POST", GENERATE, {**body, "wait": False})
        assert queued.status_code == 202  # not waiting: not bounded
    assert Generation.objects.count() == 1
