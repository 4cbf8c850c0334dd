import pytest

from apps.generation import services
from apps.generation.models import ModelTarget
from apps.prompts import services as prompts
from tests.factories import UserFactory
from tests.generation.fake_openai import FakeOpenAI

TEXT_SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string", "minLength": 1}, "n": {"type": "integer"}},
    "required": ["topic"],
}
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}, "score": {"type": "number"}},
    "required": ["label", "score"],
}


@pytest.fixture
def fake_server():
    with FakeOpenAI() as server:
        yield server


def remote_target(squad, url: str, name: str = "fake") -> ModelTarget:
    return services.model_target_create(
        actor=UserFactory(username="owner"),
        squad=squad,
        name=name,
        kind="remote",
        base_url=url,
        price_input_per_1k="0.5",
        price_output_per_1k="1.5",
    )


def text_prompt(squad, target: str = "fake", slug: str = "writer", **extra):
    owner = UserFactory(username="owner")
    template = prompts.prompt_template_create(
        actor=owner,
        squad=squad,
        slug=slug,
        first_version={
            "messages": [{"role": "user", "content": "Write about {{ topic }}."}],
            "input_schema": TEXT_SCHEMA,
            "commit_message": "v1",
            "model": {"target": target, "max_new_tokens": 16, "temperature": 0.0, "seed": 1},
            **extra,
        },
    )
    return template.latest_version


def json_prompt(squad, target: str = "fake", fallback: str = ""):
    return text_prompt(
        squad,
        target=target,
        slug="classifier",
        output_format="json",
        output_schema=OUTPUT_SCHEMA,
        fallback_target=fallback,
    )
