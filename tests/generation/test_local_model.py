"""End to end with the real default model (SmolLM2-135M-Instruct) on the CPU."""

import pytest

from apps.generation import services
from apps.generation.models import Generation
from tests.factories import UserFactory
from tests.generation.conftest import OUTPUT_SCHEMA, text_prompt

pytestmark = [pytest.mark.model, pytest.mark.django_db]


def test_generation_with_the_default_local_model(squad):
    version = text_prompt(squad, target="local")
    generation = services.generation_request(
        actor=UserFactory(username="engineer"),
        version=version,
        variables={"topic": "the capital of France"},
        source=Generation.Source.PLAYGROUND,
    )
    generation = services.generation_run(generation_id=generation.pk)
    assert generation.status == "ok", generation.errors
    assert generation.output_text.strip()
    assert 0 < generation.output_tokens <= 16 and generation.input_tokens > 5
    assert generation.target_used == "local" and generation.cost == 0
    # Greedy with a seed: the same call gives the same text.
    again = services.generation_request(
        actor=UserFactory(username="engineer"),
        version=version,
        variables={"topic": "the capital of France"},
    )
    assert services.generation_run(generation_id=again.pk).output_text == generation.output_text


def test_small_model_json_is_enforced_not_trusted(squad):
    """A 135M model rarely meets a strict schema: whatever it answers, the result is either
    valid against the schema or marked invalid with the errors — never accepted silently."""
    version = text_prompt(
        squad,
        target="local",
        slug="classify",
        output_format="json",
        output_schema=OUTPUT_SCHEMA,
    )
    generation = services.generation_request(
        actor=UserFactory(username="engineer"), version=version, variables={"topic": "spam?"}
    )
    generation = services.generation_run(generation_id=generation.pk)
    kinds = [a["kind"] for a in generation.attempts]
    if generation.status == "ok":
        assert set(generation.output_json) >= {"label", "score"}
    else:
        assert generation.status == "invalid" and generation.errors
        assert kinds == ["first", "repair"]
