"""The squad's gateway page: keys, quotas with live usage, recent calls, the snippet."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.factories import PASSWORD
from tests.gateway.conftest import V1, make_key
from tests.generation.conftest import remote_target

pytestmark = pytest.mark.django_db
PAGE = "/squads/acme/gateway/"


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_owner_creates_a_key_and_sees_calls_and_usage(squad, upstream):
    remote_target(squad, upstream.url)
    owner = _client("owner")
    created = owner.post(
        f"{PAGE}keys", {"name": "web", "targets": "*", "prompts": "", "allow_gateway": "on"}
    )
    assert created.status_code == 201
    secret = created.context["created"]["secret"]
    assert secret.encode() in created.content
    client = V1(secret)
    for _ in range(2):
        client.chat({"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    page = owner.get(PAGE)
    assert page.status_code == 200
    assert secret.encode() not in page.content
    assert len(page.context["calls"]) == 2
    assert page.context["squad_usage"]["requests"] == 2
    assert b"tokens, cost 0." in page.content  # an amount, not the counter's millionths
    assert b"/v1/chat/completions" in page.content and b"openai.OpenAI" in page.content
    filtered = owner.get(PAGE, {"status": "failed"})
    assert filtered.context["calls"] == []
    bad = owner.post(f"{PAGE}quota", {"requests_per_minute": "lots"})
    assert bad.status_code == 422 and b"requests_per_minute" in bad.content


def test_page_queries_do_not_grow_with_calls(squad, upstream):
    remote_target(squad, upstream.url)
    client = V1(make_key(squad))
    owner = _client("owner")

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert owner.get(PAGE).status_code == 200
        return len(ctx.captured_queries)

    client.chat({"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    queries()  # warm the session, squad and permission caches
    one = queries()
    for _ in range(5):
        client.chat({"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    assert queries() == one


def test_the_navigation_shows_the_page_to_those_who_may_see_it(squad):
    assert b'href="/squads/acme/gateway/"' in _client("engineer").get("/squads/acme/").content
    assert b'href="/squads/acme/gateway/"' not in _client("viewer").get("/squads/acme/").content
    engineer_page = _client("engineer").get(PAGE)
    assert engineer_page.status_code == 200 and b"Create key" not in engineer_page.content
