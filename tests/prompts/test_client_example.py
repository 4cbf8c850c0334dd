"""The documented client example works against a real server."""

import httpx
import pytest

from apps.prompts import services
from examples.prompt_client import PromptClient
from tests.factories import UserFactory
from tests.prompts.factories import make_prompt
from tests.reviews.factories import approve

pytestmark = pytest.mark.django_db(transaction=True)


def test_client_caches_with_etags_and_survives_an_outage(live_server, squad):
    owner = UserFactory(username="owner")
    template = make_prompt(squad, owner)
    approve(template.latest_version)
    services.label_move(
        actor=owner, template=template, name="production", version=template.latest_version
    )
    from apps.squads.services import api_token_create

    _, secret = api_token_create(actor=UserFactory(username="viewer"), name="app")
    seen: list[int] = []
    client = PromptClient(live_server.url, secret, max_age=0)
    client._http.event_hooks["response"] = [lambda r: seen.append(r.status_code)]
    assert client.get("acme", "support")["version"] == 1
    assert client.get("acme", "support")["version"] == 1
    assert seen == [200, 304]
    messages = client.render("acme", "support", {"customer": {"name": "Ada"}, "question": "Hi"})
    assert messages[1]["content"] == "Hi"
    with pytest.raises(ValueError, match="'question' is a required property"):
        client.render("acme", "support", {"customer": {"name": "Ada"}})
    # Studio goes away: the last good copy keeps serving.
    client._http = httpx.Client(base_url="http://127.0.0.1:9/api/v1", timeout=0.5)
    assert client.get("acme", "support")["version"] == 1
    client.close()
