import pytest

from apps.evals import services
from tests.factories import UserFactory
from tests.generation.conftest import json_prompt, remote_target, text_prompt
from tests.generation.fake_openai import FakeOpenAI


@pytest.fixture
def fake_server():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def writer(squad, fake_server):
    """Prompt 'writer' (text, target 'fake' → the echoing fake server): the model answers
    "echo: Write about <topic>."."""
    remote_target(squad, fake_server.url)
    return text_prompt(squad)


def add_case(template, name: str, topic: str, assertions: list, tags=None, user="engineer"):
    return services.test_case_create(
        actor=UserFactory(username=user),
        template=template,
        name=name,
        variables={"topic": topic},
        assertions=assertions,
        tags=tags or [],
    )


__all__ = ["add_case", "json_prompt", "remote_target", "text_prompt"]
