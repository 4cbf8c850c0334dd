"""The local OpenAI-compatible inference server (workers/server) through the `openai`
client: SmolLM2 served by one process (marked `model`), and its supervision (a tiny
random model, so restarts are cheap)."""

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.processes import ManagedProcess, ProcessDied
from tests.workers.local_server import ROOT, health, local_server, wait_healthy

MODEL = "smollm2-135m-instruct"
ADAPTER = "squad-1/job-7"
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Explain photosynthesis in one sentence.",
    "What is two plus two?",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
    "List the planets of the solar system.",
    "Say hello in Spanish.",
    "What does a librarian do?",
    "Describe a cat to someone who has never seen one.",
    "What is the boiling point of water?",
    "Suggest a name for a pet goldfish.",
    "Tell me a fun fact about octopuses.",
    "What is the opposite of cold?",
]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """SmolLM2 served from the data dir (the server converts it on first use), with an
    adapters root that the adapter test fills."""
    from django.conf import settings

    adapters = tmp_path_factory.mktemp("adapters")
    env = {"STUDIO_DATA_DIR": str(settings.DATA_DIR)}
    with local_server("--adapters-dir", str(adapters), env=env) as (base_url, _):
        yield base_url, adapters


def make_adapter(directory):
    """A LoRA adapter for SmolLM2 with random (non-zero) weights: it changes the answers.
    Only the shapes matter, so it is made on a randomly initialised model from the
    converted model's config, without loading the weights here."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from workers.runtime.local import model_dir

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir()))
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(directory)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, question: str, **options):
    options.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=user(question), **options)


@pytest.mark.model
def test_a_completion(client):
    from transformers import AutoTokenizer

    from workers.runtime.local import model_dir

    answer = ask(client, QUESTIONS[0], max_tokens=20)

    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    prompt = AutoTokenizer.from_pretrained(model_dir()).apply_chat_template(
        user(QUESTIONS[0]), add_generation_prompt=True, return_dict=True
    )
    assert answer.usage.prompt_tokens == len(prompt["input_ids"])
    assert 0 < answer.usage.completion_tokens < 20
    assert answer.model == MODEL and answer.object == "chat.completion"


@pytest.mark.model
def test_a_stream_sends_chunks_then_usage(client):
    whole = ask(client, QUESTIONS[2], max_tokens=16)

    usage = {"include_usage": True}
    chunks = list(ask(client, QUESTIONS[2], max_tokens=16, stream=True, stream_options=usage))

    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 3
    assert "".join(texts) == whole.choices[0].message.content
    *body, finish, last = chunks
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in [*body, finish])


@pytest.mark.model
def test_stop_strings_end_the_answer_before_them(client):
    plain = ask(client, QUESTIONS[8], max_tokens=16).choices[0].message.content
    stop = plain[len(plain) // 2 :][:3]
    assert stop.strip() and stop in plain

    stopped = ask(client, QUESTIONS[8], max_tokens=16, stop=["never-said", stop])
    streamed = ask(client, QUESTIONS[8], max_tokens=16, stop=stop, stream=True)

    expected = plain[: plain.index(stop)]
    assert stopped.choices[0].message.content == expected
    assert stopped.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


@pytest.mark.model
def test_max_tokens_caps_the_answer(client):
    longer = ask(client, QUESTIONS[11], max_tokens=12).choices[0].message.content

    short = ask(client, QUESTIONS[11], max_tokens=3)

    assert short.usage.completion_tokens == 3
    assert short.choices[0].finish_reason == "length"
    assert longer.startswith(short.choices[0].message.content)
    assert len(short.choices[0].message.content) < len(longer)


@pytest.mark.model
def test_an_adapter_is_selected_per_request(client, server):
    make_adapter(server[1] / ADAPTER)
    listed = [m.id for m in client.models.list()]
    assert listed == [MODEL, ADAPTER]

    def run(adapter):
        extra = {"adapter_id": adapter} if adapter else None
        return ask(client, QUESTIONS[3], max_tokens=8, extra_body=extra).choices[0].message.content

    base, tuned = run(None), run(ADAPTER)
    assert base != tuned
    with ThreadPoolExecutor(4) as pool:  # mixed rows in one batch: each as alone
        assert list(pool.map(run, [ADAPTER, None, ADAPTER, None])) == [tuned, base] * 2

    with pytest.raises(openai.BadRequestError) as info:
        run("squad-1/../../etc")
    assert info.value.response.json()["error"]["param"] == "adapter_id"


@pytest.mark.model
def test_bad_requests_get_openai_shaped_400s(client, server):
    base_url = server[0]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "bot", "content": "hi"}])
    assert info.value.status_code == 400
    assert info.value.response.json() == {
        "error": {
            "message": "messages[0].role must be one of system, developer, user, assistant; "
            "got 'bot'.",
            "type": "invalid_request_error",
            "param": "messages[0].role",
            "code": None,
        }
    }

    cases = [
        (b"{not json", None, "invalid_json"),
        (json.dumps({"messages": user("hi"), "temperature": 3}).encode(), "temperature", None),
        (json.dumps({"messages": user("hi"), "max_tokens": 0}).encode(), "max_tokens", None),
        (json.dumps({"messages": user("hi"), "stop": ["a"] * 5}).encode(), "stop", None),
        (json.dumps({"messages": []}).encode(), "messages", None),
        (
            json.dumps({"messages": user("hi"), "max_tokens": 9000}).encode(),
            "messages",
            "context_length_exceeded",
        ),
    ]
    for body, param, code in cases:
        response = httpx.post(f"{base_url}/v1/chat/completions", content=body, timeout=30)
        error = response.json()["error"]
        assert response.status_code == 400, body
        assert (error["param"], error["code"], error["type"]) == (
            param,
            code,
            "invalid_request_error",
        ), body
        assert error["message"]


@pytest.mark.model
def test_concurrent_requests_return_what_each_returns_alone(client, server):
    """16 requests of different lengths and stops, sent together, share the decode loop;
    at temperature 0 each answer is exactly the one it gets when sent alone."""
    stops = [None, ["."], [","], ["\n"]]
    plans = [
        (question, 3 + index % 8, stops[index % 4]) for index, question in enumerate(QUESTIONS)
    ]

    def run(plan):
        question, max_tokens, stop = plan
        answer = ask(client, question, max_tokens=max_tokens, stop=stop)
        return answer.choices[0].message.content, answer.choices[0].finish_reason

    alone = [run(plan) for plan in plans]
    before = health(server[0])["peak_rows"]
    started = time.monotonic()
    with ThreadPoolExecutor(len(plans)) as pool:
        together = list(pool.map(run, plans))
    print(f"16 together: {time.monotonic() - started:.1f} s")

    assert together == alone
    assert {reason for _, reason in alone} == {"stop", "length"}
    assert before < 8 <= health(server[0])["peak_rows"]


def test_a_killed_server_is_restarted_and_a_batch_rides_through(tiny_model, tmp_path, settings):
    """What `make run` starts (scripts/run.sh): `python -m workers.server --supervise`. A
    batch sent right after the server was killed is answered once it is back."""
    from workers.runtime import GenerationParams
    from workers.runtime.backends import TargetSpec, run_conversations
    from workers.runtime.local import save_converted

    from .test_local_runtime import CONVERSATIONS

    save_converted(tiny_model.model, tiny_model.tokenizer, tmp_path / "models" / "tiny")
    env = {"STUDIO_DATA_DIR": str(tmp_path)}
    params = GenerationParams(max_new_tokens=4, temperature=0)
    expected = tiny_model.generate(CONVERSATIONS, params)
    with local_server("--supervise", "--model", "tiny", env=env) as (base_url, supervisor):
        settings.STUDIO_LOCAL_SERVER_URL = base_url
        first = health(base_url)["pid"]
        assert first != supervisor.pid

        os.kill(first, signal.SIGKILL)
        spec = TargetSpec(name="local", kind="local", base_model="tiny")
        outcomes = run_conversations(spec, CONVERSATIONS, params)

        assert [(o.text, o.output_tokens) for o in outcomes] == [
            (r.text, r.output_tokens) for r in expected
        ]
        assert health(base_url)["pid"] not in (first, None)
        assert f"local inference server pid {first} killed by SIGKILL; restarting" in (
            supervisor.output_tail(60)
        )


def test_a_server_that_keeps_dying_stops_its_supervisor_loudly(tmp_path):
    command = [sys.executable, "-m", "workers.server", "--supervise", "--model", "missing"]
    env = {"STUDIO_DATA_DIR": str(tmp_path)}
    supervisor = ManagedProcess("supervisor", command, env=env, cwd=ROOT)
    try:
        assert supervisor.process.wait(timeout=90) == 1
        output = supervisor.output_tail(60)
    finally:
        supervisor.stop()
    assert "cannot serve missing: The model 'missing' does not exist" in output
    assert "died 6 times within 60 s" in output and "giving up" in output


def test_wait_healthy_names_a_server_that_died(tmp_path):
    process = ManagedProcess(
        "server",
        [sys.executable, "-m", "workers.server", "--model", "missing"],
        env={"STUDIO_DATA_DIR": str(tmp_path)},
        cwd=ROOT,
    )
    try:
        with pytest.raises(ProcessDied, match="exited with status 2"):
            wait_healthy("http://127.0.0.1:9", process, timeout=60)
    finally:
        process.stop()
