import pytest

from apps.generation import services as generation
from apps.generation.models import BatchJob
from tests.factories import UserFactory, make_squad
from tests.generation.conftest import remote_target, text_prompt
from tests.generation.fake_openai import FakeOpenAI


@pytest.fixture
def model_server():
    with FakeOpenAI(delay=0.1) as server:
        yield server


@pytest.fixture
def two_squads(squad, model_server):
    """acme (the `squad` fixture) and beta, each with a remote target on `model_server`
    and a prompt; {slug: prompt version}."""
    beta = make_squad(
        owner=UserFactory(username="owner"),
        slug="beta",
        name="Beta",
        members={"engineer": ["prompt_engineer"]},
    )
    prompts = {}
    for each in (squad, beta):
        remote_target(each, model_server.url)
        prompts[each.slug] = text_prompt(each)
    return prompts


def queue(prompts, slug: str, n: int = 1, rows: int = 1) -> list[BatchJob]:
    """`n` batch jobs of `rows` rows each, queued by the squad's engineer."""
    content = "".join(f'{{"topic": "row {i}"}}\n' for i in range(rows)).encode()
    return [
        generation.batch_job_create(
            actor=UserFactory(username="engineer"),
            version=prompts[slug],
            content=content,
            filename="rows.jsonl",
            batch_size=1,
        )
        for _ in range(n)
    ]
