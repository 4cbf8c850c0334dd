"""A `local` target through `run_conversations`: in this process on the continuous-batching
loop, or through the local inference server when STUDIO_LOCAL_SERVER_URL is set (the
server runs in a thread here, on the tiny random model)."""

import copy
import threading

import pytest

from workers.runtime import BackendError, GenerationParams
from workers.runtime import engine as engine_module
from workers.runtime.backends import TargetSpec, run_conversations

from .test_local_runtime import CONVERSATIONS

GREEDY = GenerationParams(max_new_tokens=6, temperature=0)
SPEC = TargetSpec(name="local", kind="local", base_model="tiny")


@pytest.fixture
def tiny_dir(tiny_model, settings, tmp_path):
    from workers.runtime.local import load_local_model, save_converted

    settings.DATA_DIR = tmp_path
    settings.STUDIO_LOCAL_SERVER_URL = ""
    save_converted(tiny_model.model, tiny_model.tokenizer, tmp_path / "models" / "tiny")
    return load_local_model("tiny")


def test_in_process_rows_share_one_batch_whatever_the_batch_size(tiny_dir, monkeypatch):
    forward = tiny_dir.model.forward
    rows = []

    def spy(**kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return forward(**kwargs)

    monkeypatch.setattr(tiny_dir.model, "forward", spy)
    monkeypatch.setattr(engine_module, "PREFIX_MIN_TOKENS", 10**9)  # no shared-start forward
    done = []

    outcomes = run_conversations(SPEC, CONVERSATIONS, GREEDY, batch_size=2, on_progress=done.append)

    assert rows[0] == len(CONVERSATIONS)  # the runtime chose the batch, not batch_size=2
    assert [o.output_tokens for o in outcomes] == [6] * len(CONVERSATIONS)
    assert done == [1, 2, 3, 4, 5]


def test_in_process_a_row_too_long_fails_alone(tiny_dir):
    room = tiny_dir.context_length - tiny_dir.count_tokens(CONVERSATIONS[0])
    params = GenerationParams(max_new_tokens=room, temperature=0)

    ok, too_long = run_conversations(SPEC, [CONVERSATIONS[0], CONVERSATIONS[4]], params)

    assert not isinstance(ok, BackendError) and ok.input_tokens + ok.output_tokens <= 256
    assert isinstance(too_long, BackendError) and "context window" in str(too_long)


@pytest.fixture
def served(tiny_dir, settings, tmp_path):
    """The server in a thread over a copy of the tiny model; the setting points at it."""
    from workers.runtime.local import LocalModel
    from workers.server.app import InferenceHTTPServer, InferenceService

    model = LocalModel(copy.deepcopy(tiny_dir.model), tiny_dir.tokenizer)
    service = InferenceService(model, "tiny", tmp_path / "finetune")
    service.start()
    server = InferenceHTTPServer(("127.0.0.1", 0), service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.STUDIO_LOCAL_SERVER_URL = f"http://127.0.0.1:{server.server_address[1]}"
    yield service
    server.shutdown()
    server.server_close()
    service.engine.stop()


def test_through_the_server_when_the_setting_points_at_it(tiny_dir, served):
    in_process = tiny_dir.generate(CONVERSATIONS, GREEDY)

    outcomes = run_conversations(SPEC, CONVERSATIONS, GREEDY)

    assert [(o.text, o.output_tokens) for o in outcomes] == [
        (r.text, r.output_tokens) for r in in_process
    ]
    assert served.engine.peak_rows > 1  # the rows shared the server's batch


def test_an_attached_adapter_goes_to_the_server_as_adapter_id(tiny_dir, served, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "finetune" / "3" / "17"
    torch.manual_seed(2)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(copy.deepcopy(tiny_dir.model), lora).save_pretrained(adapter)
    spec = TargetSpec(name="local", kind="local", base_model="tiny", adapter_dir=str(adapter))

    tuned = run_conversations(spec, CONVERSATIONS[:2], GREEDY)
    base = run_conversations(SPEC, CONVERSATIONS[:2], GREEDY)

    assert list(served.adapter_names) == ["3/17"]
    assert [t.text for t in tuned] != [b.text for b in base]

    outside = TargetSpec(name="local", kind="local", base_model="tiny", adapter_dir="/tmp/x")
    [failed] = run_conversations(outside, CONVERSATIONS[:1], GREEDY)
    assert isinstance(failed, BackendError) and "adapters root" in str(failed)


def test_the_server_lists_trained_adapters_only(served, tmp_path):
    for where in ("3/17/adapter", "3/17/checkpoints/step-2/adapter", "3/18/.adapter-tmp"):
        (tmp_path / "finetune" / where).mkdir(parents=True)
        (tmp_path / "finetune" / where / "adapter_config.json").write_text("{}")

    import httpx
    from django.conf import settings

    listed = httpx.get(f"{settings.STUDIO_LOCAL_SERVER_URL}/v1/models", timeout=30).json()
    assert listed["data"][0]["id"] == "tiny" and listed["data"][0]["loaded"] is True
    adapters = [(m["id"], m["parent"]) for m in listed["data"] if "parent" in m]
    assert adapters == [("3/17/adapter", "tiny")]
