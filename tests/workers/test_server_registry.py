"""The local inference server and the base-model registry: a real server process
(`python -m workers.server`) over the workers' data dir loads a model registered after it
started on its first request, within its memory budget (evicting the least recently used
idle model), refuses what cannot fit naming the budget, and refuses a model whose weight
file changed on disk; that refusal reaches the worker side of a generation, which marks
the registry version `changed` and audits it. Tiny random models, as in
tests/workers/test_base_models.py."""

from pathlib import Path

import httpx
import pytest

from apps.audit.models import AuditEvent
from apps.basemodels.models import BaseModelVersion
from apps.generation import services as generation
from apps.generation.models import Generation
from tests.factories import UserFactory
from tests.generation.conftest import text_prompt
from tests.workers.local_server import local_server
from tests.workers.test_base_models import register, save_tiny

MIB = 2**20


def weights_mib(folder: Path) -> float:
    """The fp32 weights of a saved tiny model, in MiB (the server's budget unit)."""
    return (folder / "model.safetensors").stat().st_size / MIB


def generate(squad, target: str, slug: str) -> Generation:
    prompt = text_prompt(squad, target=target, slug=slug)
    row = generation.generation_request(
        actor=UserFactory(username="engineer"),
        version=prompt,
        variables={"topic": "x"},
        source=Generation.Source.PLAYGROUND,
    )
    return generation.generation_run(generation_id=row.pk)


def listed(base_url: str) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"]}


@pytest.mark.django_db(transaction=True)
def test_the_server_hot_loads_registrations_within_its_budget_and_refuses_changed_files(
    squad,
    store,
    smollm2_tokenizer,
    settings,
):
    from django.conf import settings as django_settings

    llama_dir = save_tiny(store, "tiny-llama", "llama", smollm2_tokenizer)
    assert register("tiny-llama", "tiny-llama").status == "ready"
    owner = UserFactory(username="owner")
    one = weights_mib(llama_dir)
    budget = int(one * 1.5) + 1  # one tiny model fits, two do not
    env = {"STUDIO_DATA_DIR": str(django_settings.DATA_DIR)}
    args = ("--model", "tiny-llama", "--memory-budget-mb", str(budget))
    with local_server(*args, env=env) as (base_url, process):
        settings.STUDIO_LOCAL_SERVER_URL = base_url
        # registered after the server started: listed as loadable, not loaded
        save_tiny(store, "tiny-qwen", "qwen2", smollm2_tokenizer)
        qwen = register("tiny-qwen", "tiny-qwen")
        assert qwen.status == "ready"
        models = listed(base_url)
        assert models["tiny-llama"]["loaded"] is True
        assert models["tiny-qwen"]["loaded"] is False
        for name in ("tiny-llama", "tiny-qwen"):
            generation.model_target_create(
                actor=owner, squad=squad, name=name, kind="local", base_model=name
            )

        # first request: loaded, the idle tiny-llama evicted to fit the budget
        row = generate(squad, "tiny-qwen", "q")
        assert row.status == "ok", row.errors
        assert row.output_tokens > 0
        health = httpx.get(f"{base_url}/health", timeout=30).json()
        assert health["models"] == ["tiny-qwen"]
        assert health["memory_budget_mb"] == budget
        assert "evicted tiny-llama (least recently used, idle) to load tiny-qwen" in (
            process.output_tail(80)
        )
        assert listed(base_url)["tiny-llama"]["loaded"] is False

        # a model larger than the whole budget: refused, naming the budget
        big = save_tiny(store, "tiny-big", "llama", smollm2_tokenizer, hidden_size=96)
        assert register("tiny-big", "tiny-big").status == "ready"
        assert weights_mib(big) > budget
        assert "tiny-big" not in listed(base_url)  # not loadable here
        answer = httpx.post(
            f"{base_url}/v1/chat/completions",
            json={"model": "tiny-big", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        error = answer.json()["error"]
        assert answer.status_code == 400
        assert (error["code"], error["param"]) == ("model_over_memory_budget", "model")
        assert f"memory budget is {budget} MiB" in error["message"]

        # a weight file of the evicted tiny-llama changes on disk: the server refuses to
        # load it again; the worker side records the refusal in the registry, audited
        weights = llama_dir / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        row = generate(squad, "tiny-llama", "l")
        assert row.status == "failed"
        assert "model.safetensors has sha256" in row.errors[0]["message"]
        assert "register it again" in row.errors[0]["message"]
        version = BaseModelVersion.objects.get(model__name="tiny-llama", number=1)
        assert version.status == "changed"
        assert "model.safetensors has sha256" in version.refusal
        event = AuditEvent.objects.get(action="basemodels.files_changed")
        assert event.data["name"] == "tiny-llama"
        assert event.data["manifest_sha256"] == version.manifest_sha256
        assert "refused to load tiny-llama" in process.output_tail(80)
        # the server answers in OpenAI's shape with what the apps need to record it
        answer = httpx.post(
            f"{base_url}/v1/chat/completions",
            json={
                "model": "tiny-llama",
                "messages": [{"role": "user", "content": "hi"}],
                "base_model_sha256": version.manifest_sha256,
            },
            timeout=60,
        )
        error = answer.json()["error"]
        assert answer.status_code == 409 and error["code"] == "model_files_changed"
        assert error["model"] == "tiny-llama" and error["problems"]
        # still served: the model it had loaded
        assert generate(squad, "tiny-qwen", "q2").status == "ok"


@pytest.mark.django_db(transaction=True)
def test_a_stream_refused_for_changed_files_is_recorded_too(
    squad,
    store,
    smollm2_tokenizer,
    settings,
):
    """The gateway's `stream: true` path (apps.generation.pipeline.stream_row)."""
    from django.conf import settings as django_settings

    from apps.generation import pipeline
    from workers.runtime.registry import ModelFilesChanged

    folder = save_tiny(store, "tiny-llama", "llama", smollm2_tokenizer)
    save_tiny(store, "tiny-qwen", "qwen2", smollm2_tokenizer)
    version = register("tiny-llama", "tiny-llama")
    assert register("tiny-qwen", "tiny-qwen").status == "ready"
    target = generation.model_target_create(
        actor=UserFactory(username="owner"),
        squad=squad,
        name="mine",
        kind="local",
        base_model="tiny-llama",
    )
    prompt = text_prompt(squad, target="mine", slug="s")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    env = {"STUDIO_DATA_DIR": str(django_settings.DATA_DIR)}
    with local_server("--model", "tiny-qwen", env=env) as (base_url, _):
        settings.STUDIO_LOCAL_SERVER_URL = base_url
        deltas = pipeline.stream_row(prompt, target, [{"role": "user", "content": "hi"}])
        with pytest.raises(ModelFilesChanged, match=r"model\.safetensors has sha256"):
            list(deltas)
    version.refresh_from_db()
    assert version.status == "changed"
    assert AuditEvent.objects.filter(action="basemodels.files_changed").count() == 1


def test_a_busy_model_is_not_evicted_and_the_least_recently_used_idle_one_is(
    tmp_path, tiny_model, settings
):
    """In process: a model that a request holds is never evicted; a model that needs its
    room is refused with 503 and Retry-After, naming the budget, and loads once it is
    idle; eviction takes the least recently used idle model."""
    from workers.runtime.local import save_converted
    from workers.server.app import ModelPool
    from workers.server.protocol import RequestError

    settings.DATA_DIR = tmp_path
    for name in ("a", "b", "c"):
        save_converted(tiny_model.model, tiny_model.tokenizer, tmp_path / "models" / name)
    one = (tmp_path / "models" / "a" / "model.safetensors").stat().st_size
    pool = ModelPool(tmp_path / "finetune", budget_bytes=int(one * 2.5))
    try:
        assert {"a", "b", "c"} <= set(pool.loadable())
        for name in ("a", "b"):
            with pool.use(name):
                pass
        with pool.use("a"):  # a is now the most recently used...
            pass
        with pool.use("c"):  # ...so b, the least recently used, makes room for c
            assert list(pool.services) == ["a", "c"]
            with pool.use("a"), pytest.raises(RequestError) as refused:  # both held
                pool.acquire("b")
        error = refused.value
        assert (error.status, error.code, error.retry_after) == (503, "memory_budget_exceeded", 2)
        assert f"memory budget of {int(one * 2.5) // MIB} MiB" in error.message
        assert "answering requests, retry shortly" in error.message
        with pool.use("b"):  # idle again: the least recently used (c) goes
            assert sorted(pool.services) == ["a", "b"]
        with pytest.raises(RequestError) as unknown:
            pool.acquire("../etc")
        assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")
        # a registration the apps expect that this worker does not hold: not loaded
        with pytest.raises(RequestError) as other:
            pool.acquire("c", "f" * 64)
        assert (other.value.status, other.value.code) == (409, "model_not_loadable")
        assert "not registered on this worker" in other.value.message
    finally:
        pool.stop()
