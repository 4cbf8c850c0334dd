"""The official `openai` client against Studio's gateway as `make run` serves it
(gunicorn with a uvicorn worker over studio.asgi; not a mock of either): completion,
stream with usage, json_schema, a prompt model with extra_body variables, and each
error as the client's own exception class. Upstreams: a scripted OpenAI-compatible
server, then (marked `model`) the local inference server and llama.cpp's server with
SmolLM2."""

import json

import openai
import pytest

from apps.gateway import services as gateway
from apps.gateway.models import ServiceKey
from apps.generation import services as generation_services
from apps.generation.models import Generation
from apps.prompts import services as prompts
from tests.factories import UserFactory
from tests.gateway.conftest import make_key
from tests.generation.conftest import remote_target, text_prompt
from tests.generation.fake_openai import FakeOpenAI

pytestmark = pytest.mark.django_db(transaction=True)
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


def answer(request):
    if request.get("stream"):
        return ["Bonjour", " from", " Paris"]
    if (request.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        return '{"city": "Paris", "population": 2100000}'
    last = request["messages"][-1]["content"]
    if "JSON" in json.dumps(request["messages"]):
        return '{"city": "Paris", "population": 2100000}'
    return f"echo: {last}"


@pytest.fixture
def studio(squad, asgi_server):
    with FakeOpenAI(answer) as upstream:
        remote_target(squad, upstream.url)
        version = text_prompt(squad)
        prompts.label_move(
            actor=UserFactory(username="owner"),
            template=version.template,
            name="staging",
            version=version,
        )
        client = openai.OpenAI(base_url=f"{asgi_server}/v1", api_key=make_key(squad), max_retries=0)
        yield client, upstream, asgi_server


def test_models_and_a_completion(studio):
    client, upstream, _ = studio
    ids = [m.id for m in client.models.list()]
    assert "fake" in ids and "prompt/writer@staging" in ids
    raw = client.chat.completions.with_raw_response.create(
        model="fake",
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=20,
        temperature=0,
        seed=7,
        stop=["\n\n"],
        user="u-1",
        metadata={"team": "web"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hi"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 2
    generation = Generation.objects.get(pk=raw.headers["x-studio-generation-id"])
    assert generation.end_user == "u-1" and generation.metadata == {"team": "web"}
    sent = upstream.requests[-1]
    assert (sent["max_tokens"], sent["temperature"], sent["seed"], sent["stop"]) == (
        20,
        0,
        7,
        ["\n\n"],
    )


def test_stream_with_usage(studio):
    client, _, _ = studio
    stream = client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Bonjour from Paris"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert Generation.objects.get().status == "ok"


def test_json_schema_output(studio):
    client, _, _ = studio
    completion = client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": "Which city?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": SCHEMA, "strict": True},
        },
    )
    assert json.loads(completion.choices[0].message.content) == {
        "city": "Paris",
        "population": 2100000,
    }


def test_prompt_model_with_extra_body_variables(studio):
    client, upstream, _ = studio
    completion = client.chat.completions.create(
        model="prompt/writer@staging",
        messages=[{"role": "user", "content": "and keep it short"}],
        extra_body={"variables": {"topic": "owls"}},
    )
    assert completion.choices[0].message.content == "echo: and keep it short"
    assert upstream.requests[-1]["messages"][0]["content"] == "Write about owls."


def test_errors_arrive_as_the_clients_exception_classes(studio, squad):
    client, _, base_url = studio
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="prompt/writer:1", messages=[], extra_body={"variables": {"topic": 5}}
        )
    assert bad.value.code == "invalid_variables" and bad.value.param == "variables.topic"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-studio-wrong").models.list()
    fetch_only = make_key(squad, allow_gateway=False, allow_prompt_fetch=True)
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key=fetch_only).models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    key = ServiceKey.objects.filter(allow_gateway=True).first()
    gateway.quota_set(
        actor=UserFactory(username="owner"), squad=squad, key=key, requests_per_minute=0
    )
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def _through(squad, gateway_server, *, kind: str, **target) -> None:
    generation_services.model_target_create(
        actor=UserFactory(username="owner"), squad=squad, name="smol", kind=kind, **target
    )
    client = openai.OpenAI(base_url=f"{gateway_server}/v1", api_key=make_key(squad), max_retries=0)
    completion = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 8
    chunks = list(
        client.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == completion.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == completion.usage.completion_tokens
    assert set(Generation.objects.values_list("status", flat=True)) == {"ok"}


@pytest.mark.model
def test_through_llama_cpp_server(squad, gateway_server):
    from tests.workers.llama_server import llama_server

    with llama_server() as base_url:
        _through(
            squad,
            gateway_server,
            kind="remote",
            base_url=base_url,
            remote_model="smollm2-135m-instruct",
        )


@pytest.mark.model
def test_through_the_local_inference_server(squad, gateway_server, settings):
    from tests.workers.local_server import local_server

    with local_server() as (base_url, _):
        settings.STUDIO_LOCAL_SERVER_URL = base_url
        _through(squad, gateway_server, kind="local", base_model="smollm2-135m-instruct")
