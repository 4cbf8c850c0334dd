import json

import pytest
from django.test import Client

from apps.gateway import services
from apps.squads.models import Squad
from tests.factories import UserFactory
from tests.generation.conftest import json_prompt, remote_target, text_prompt  # noqa: F401
from tests.generation.fake_openai import FakeOpenAI


@pytest.fixture
def upstream():
    with FakeOpenAI() as server:
        yield server


def make_key(squad: Squad, **scope) -> str:
    scope.setdefault("targets", ["*"])
    scope.setdefault("prompts", ["*"])
    _, secret = services.service_key_create(
        actor=UserFactory(username="owner"), squad=squad, name="app", **scope
    )
    return secret


class V1:
    """Django's test client speaking the gateway's JSON with a service key."""

    def __init__(self, secret: str | None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def chat(self, body: object, **headers: str):
        return self.client.post(
            "/v1/chat/completions",
            data=body if isinstance(body, str) else json.dumps(body),
            content_type="application/json",
            headers={**self.headers, **headers},
        )

    def models(self):
        return self.client.get("/v1/models", headers=self.headers)
