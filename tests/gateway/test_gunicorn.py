"""Per-minute limits across processes: gunicorn with two ASGI workers, 60 concurrent calls
against a key allowed 20 requests a minute → exactly 20 answered, on the configured
cache (Redis: one Lua script; the embedded default: the file cache's lock)."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from apps.gateway import services as gateway
from apps.gateway.models import ServiceKey
from apps.generation.models import Generation
from tests.factories import UserFactory
from tests.gateway.conftest import gunicorn_server, make_key
from tests.generation.conftest import remote_target
from tests.generation.fake_openai import FakeOpenAI


@pytest.mark.django_db(transaction=True)
def test_requests_per_minute_hold_across_two_gunicorn_workers(squad, tmp_path):
    with FakeOpenAI(delay=0.05) as upstream:
        remote_target(squad, upstream.url)
        secret = make_key(squad)
        gateway.quota_set(
            actor=UserFactory(username="owner"),
            squad=squad,
            key=ServiceKey.objects.get(),
            requests_per_minute=20,
        )
        # What `make run` serves: gunicorn with two uvicorn (ASGI) worker processes.
        with gunicorn_server(tmp_path, "--workers", "2") as served:
            base = served.url

            def one(_: int) -> int:
                with httpx.Client(timeout=60) as client:
                    response = client.post(
                        f"{base}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {secret}"},
                        json={"model": "fake", "messages": [{"role": "user", "content": "x"}]},
                    )
                    return response.status_code

            minute = int(time.time() // 60)
            with ThreadPoolExecutor(max_workers=60) as pool:
                results = list(pool.map(one, range(60)))
            same_minute = int(time.time() // 60) == minute
    statuses = results
    if not same_minute:  # a new window opened mid-burst: up to twice the limit is right
        assert 20 <= statuses.count(200) <= 40, statuses
        pytest.skip("the burst crossed a minute boundary; the exact count is checked within one")
    assert statuses.count(200) == 20, sorted(statuses)
    assert statuses.count(429) == 40
    assert Generation.objects.count() == 20
