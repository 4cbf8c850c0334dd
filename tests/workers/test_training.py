"""LoRA training runtime: masking, batching, settings checks, checkpoint/resume, cancel
and errors on a tiny random Llama (fast); a real fine-tune of SmolLM2 on CPU (`model`)."""

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.workers.conftest import TINY
from workers.runtime import GenerationParams
from workers.runtime.local import model_dir
from workers.runtime.training import (
    LoraSettings,
    TrainingError,
    TrainSettings,
    check_settings,
    default_target_modules,
    length_grouped_batches,
    load_adapter_model,
    read_examples,
    train,
)

ROOT = Path(__file__).resolve().parents[2]

FAST = TrainSettings(
    learning_rate=1e-2,
    max_steps=6,
    batch_size=2,
    max_seq_len=96,
    eval_every=3,
    checkpoint_every=2,
)


def chat(question: str, answer: str, split: str = "train", system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "split": split}


QUESTIONS = [
    "What colour is the sky?",
    "Name a fruit.",
    "How many legs does a spider have, and why does it matter to a biologist?",
    "Say hello.",
    "What is two plus two?",
    "Tell me about the moon in a few words, please, with a detail about its craters.",
    "Which is larger, a cat or a mouse?",
    "What day comes after Monday?",
]
ROWS = [chat(q, f"Answer {i}: ok.") for i, q in enumerate(QUESTIONS)] + [
    chat("Is water wet?", "Answer: ok.", split="eval"),
    chat("Where do fish live?", "Answer: water.", split="eval"),
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def rows_path(tmp_path):
    return write_rows(tmp_path / "rows.jsonl", ROWS)


class Recorder:
    def __init__(self, stop_at: int | None = None, cancel_after: int | None = None):
        self.progress = []
        self.logs = []
        self.stop_at = stop_at
        self.cancel_after = cancel_after

    def on_progress(self, progress):
        self.progress.append(progress)
        if progress.step == self.stop_at:
            raise KeyboardInterrupt("killed")  # as a kill -9 would, nothing catches it

    def should_cancel(self):
        return self.cancel_after is not None and len(self.progress) >= self.cancel_after

    def steps(self):
        return [p.step for p in self.progress]


DEFAULT_LORA = LoraSettings()


def run(base, rows_path, work_dir, recorder=None, lora=DEFAULT_LORA, settings=FAST):
    recorder = recorder or Recorder()
    return train(
        base_model=base,
        rows_path=rows_path,
        lora=lora,
        train=settings,
        work_dir=work_dir,
        on_progress=recorder.on_progress,
        should_cancel=recorder.should_cancel,
        log=recorder.logs.append,
    )


def adapter_weights(adapter_dir: Path):
    from safetensors.torch import load_file

    return load_file(adapter_dir / "adapter_model.safetensors")


# --- rows --------------------------------------------------------------------------------


def test_labels_mask_everything_but_the_assistants_last_answer(tmp_path, smollm2_tokenizer):
    from workers.runtime.local import LocalModel

    tokenizer = smollm2_tokenizer
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Colour of grass?"},
        {"role": "assistant", "content": "Green, mostly."},
    ]
    path = write_rows(tmp_path / "rows.jsonl", [{"messages": conversation, "split": "train"}])

    [example], [] = read_examples(path, tokenizer, 512)

    answer_at = example.labels.index(next(label for label in example.labels if label != -100))
    assert all(label == -100 for label in example.labels[:answer_at])
    assert example.labels[answer_at:] == example.input_ids[answer_at:]
    answer = tokenizer.decode(example.input_ids[answer_at:])
    assert answer.startswith("Green, mostly.")
    assert tokenizer.eos_token in answer  # the model learns to end its turn
    # The prompt is exactly what generation feeds the model, earlier answers included.
    fake = type("M", (), {"tokenizer": tokenizer, "tokenizer_lock": threading.Lock()})()
    prompt_ids = LocalModel.prompt_ids(fake, conversation[:-1])
    assert example.input_ids[:answer_at] == prompt_ids
    assert "Hello there." in tokenizer.decode(prompt_ids)
    assert example.trainable == len(example.input_ids) - answer_at


def test_prompt_completion_rows_train_as_one_user_turn(tmp_path, smollm2_tokenizer):
    rows = [
        {"prompt": "Capital of France?", "completion": "Paris.", "split": "eval"},
        chat("Capital of France?", "Paris."),
    ]
    path = write_rows(tmp_path / "rows.jsonl", rows)

    [as_chat], [as_pair] = read_examples(path, smollm2_tokenizer, 512)

    assert (as_pair.input_ids, as_pair.labels) == (as_chat.input_ids, as_chat.labels)
    assert (as_pair.row, as_chat.row) == (1, 2)


def test_long_rows_lose_prompt_tokens_from_the_left(tmp_path, smollm2_tokenizer):
    long_question = "Please consider this. " * 40 + "What is the answer?"
    path = write_rows(tmp_path / "rows.jsonl", [chat(long_question, "Forty two.")])
    [full], _ = read_examples(path, smollm2_tokenizer, 4096)

    [cut], _ = read_examples(path, smollm2_tokenizer, 64)

    assert len(full.input_ids) > 64 and not full.truncated
    assert cut.truncated and len(cut.input_ids) == 64
    assert cut.input_ids == full.input_ids[-64:]
    assert cut.labels == full.labels[-64:]
    assert cut.trainable == full.trainable


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", "row 3: not valid JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "Hi"}]}), "row 3: the last message"),
        (json.dumps({"variables": {"x": 1}, "output": "y"}), "row 3: variables rows"),
        (json.dumps({"text": "hello"}), "row 3: expected messages"),
        (json.dumps(chat("Hi", "word " * 80)), "row 3: no trainable token left"),
        (json.dumps({**chat("Hi", "ok"), "split": "test"}), "row 3: split must be"),
    ],
)
def test_bad_rows_are_refused_by_row(tmp_path, smollm2_tokenizer, row, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n" + row + "\n")

    with pytest.raises(TrainingError) as info:
        read_examples(path, smollm2_tokenizer, 64)

    assert info.value.kind == "bad_data"
    assert str(info.value).startswith(message)


def test_rows_without_a_train_split_are_bad_data(tmp_path, smollm2_tokenizer):
    path = write_rows(tmp_path / "rows.jsonl", [chat("Hi", "Hello", split="eval")])

    with pytest.raises(TrainingError, match="no rows in the train split") as info:
        read_examples(path, smollm2_tokenizer, 64)
    assert info.value.kind == "bad_data"


# --- batches -----------------------------------------------------------------------------


def test_length_grouped_batches_cover_every_row_once_with_little_padding():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(10, 300) for _ in range(1000)]

    batches = length_grouped_batches(lengths, 4, seed=7)

    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert batches == length_grouped_batches(lengths, 4, seed=7)
    assert batches != length_grouped_batches(lengths, 4, seed=8)

    def padded(batches):
        return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)

    order = list(range(1000))
    rng.shuffle(order)
    random_batches = [order[i : i + 4] for i in range(0, 1000, 4)]
    assert padded(batches) < 1.05 * sum(lengths)
    assert padded(random_batches) > 1.4 * sum(lengths)
    # Not simply longest-first: the batches are shuffled.
    assert [max(lengths[i] for i in b) for b in batches] != sorted(
        (max(lengths[i] for i in b) for b in batches), reverse=True
    )


# --- settings ------------------------------------------------------------------------------


def test_default_target_modules_per_architecture():
    assert default_target_modules("llama") == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert default_target_modules("gpt2") == ("c_attn",)
    with pytest.raises(ValueError, match="no default LoRA target modules for model type 'x'"):
        default_target_modules("x")


def test_check_settings_refuses_unknown_modules_by_name(tiny):
    problems = check_settings(
        base_model=tiny,
        lora=LoraSettings(target_modules=("q_proj", "qkv", "mlp_out")),
        train=TrainSettings(max_seq_len=256),
    )

    assert len(problems) == 1
    assert "'qkv', 'mlp_out' are not modules of llama models" in problems[0]
    assert "q_proj" in problems[0].split("known:")[1]
    assert (
        check_settings(base_model=tiny, lora=LoraSettings(), train=TrainSettings(max_seq_len=256))
        == []
    )
    assert (
        check_settings(
            base_model=tiny,
            lora=LoraSettings(target_modules=("gate_proj", "down_proj")),
            train=TrainSettings(max_seq_len=64),
        )
        == []
    )


def test_check_settings_refuses_numbers_out_of_range(tiny):
    problems = check_settings(
        base_model=tiny,
        lora=LoraSettings(r=0, dropout=1.5),
        train=TrainSettings(learning_rate=0, batch_size=0, max_seq_len=1000, max_steps=0),
    )

    text = "\n".join(problems)
    for name in ("lora.r", "lora.dropout", "train.learning_rate", "train.batch_size"):
        assert name in text
    assert "train.max_steps: must be at least 1 (got 0)" in text
    assert "train.max_seq_len: 1000 is longer than the model's context of 256 tokens" in text


SHORT = TrainSettings(max_seq_len=64)


def test_check_settings_for_a_missing_model_or_unknown_architecture(tiny, tiny_data_dir):
    [problem] = check_settings(base_model="nope", lora=LoraSettings(), train=SHORT)
    assert "base model 'nope' cannot be read" in problem

    other = tiny_data_dir / "models" / "other-arch"
    if not other.exists():
        import shutil

        shutil.copytree(tiny_data_dir / "models" / TINY, other)
        config = json.loads((other / "config.json").read_text())
        (other / "config.json").write_text(json.dumps({**config, "model_type": "newarch"}))
    [problem] = check_settings(base_model="other-arch", lora=LoraSettings(), train=SHORT)
    assert "no default LoRA target modules for model type 'newarch'" in problem
    # Module names then come from the weights' names.
    named = LoraSettings(target_modules=("q_proj", "up_proj"))
    assert check_settings(base_model="other-arch", lora=named, train=SHORT) == []
    wrong = LoraSettings(target_modules=("input_layernorm",))
    [problem] = check_settings(base_model="other-arch", lora=wrong, train=SHORT)
    assert "'input_layernorm' is not a module" in problem


def test_check_settings_does_not_import_torch(tiny_data_dir):
    script = (
        "import sys\n"
        "from workers.runtime.training import LoraSettings, TrainSettings, check_settings\n"
        f"print(check_settings(base_model={TINY!r}, lora=LoraSettings(target_modules=('x',)),"
        " train=TrainSettings(max_seq_len=64)))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "STUDIO_DATA_DIR": str(tiny_data_dir), "DJANGO_SETTINGS_MODULE": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "'x' is not a module of llama models" in done.stdout


# --- training on the tiny model --------------------------------------------------------------


def test_train_reports_every_step_and_saves_the_adapter(tiny, rows_path, tmp_path):
    recorder = Recorder()

    result = run(tiny, rows_path, tmp_path / "job", recorder, settings=FAST)

    assert recorder.steps() == [1, 2, 3, 4, 5, 6]
    last = recorder.progress[-1]
    assert (last.total_steps, last.eta_seconds) == (6, 0)
    assert last.epoch == pytest.approx(6 * 1 / 4)  # 8 train rows, batch 2: 4 batches
    assert [p.eval_loss is None for p in recorder.progress] == [True, True, False] + [False] * 3
    assert all(p.tokens_per_second > 0 for p in recorder.progress)
    assert recorder.progress[0].learning_rate == FAST.learning_rate
    losses = [p.loss for p in recorder.progress]
    assert losses[-1] < losses[0]
    assert recorder.progress[-1].smoothed_loss < losses[0]

    assert result.adapter_dir == tmp_path / "job" / "adapter"
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not (tmp_path / "job" / "checkpoints").exists()
    assert len(result.sha256) == 64 and len(result.base_model_sha256) == 64
    assert result.size_bytes > 0
    assert result.base_model == tiny
    assert result.lora_config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (result.lora_config["r"], result.lora_config["alpha"]) == (8, 16)
    metrics = result.metrics
    assert (metrics["steps"], metrics["resumed_from_step"], metrics["train_rows"]) == (6, 0, 2 * 4)
    assert metrics["eval_rows"] == 2 and metrics["eval_loss"] == last.eval_loss
    assert metrics["last_loss"] < metrics["first_loss"]
    assert metrics["tokens"] > 0 and metrics["seconds"] > 0
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny

    # The same call again returns the finished adapter without training.
    again = Recorder()
    assert run(tiny, rows_path, tmp_path / "job", again, settings=FAST) == result
    assert again.progress == []


def test_warmup_and_linear_decay(tiny, rows_path, tmp_path):
    recorder = Recorder()
    settings = dataclasses.replace(FAST, warmup_steps=2, eval_every=100)

    run(tiny, rows_path, tmp_path / "job", recorder, settings=settings)

    rates = [p.learning_rate / FAST.learning_rate for p in recorder.progress]
    assert rates == pytest.approx([0, 0.5, 1, 0.75, 0.5, 0.25])


def test_epochs_and_gradient_accumulation_set_the_step_count(tiny, rows_path, tmp_path):
    recorder = Recorder()
    settings = dataclasses.replace(FAST, max_steps=None, epochs=1.5, grad_accum=2)

    result = run(tiny, rows_path, tmp_path / "job", recorder, settings=settings)

    # 4 batches per epoch, 2 per step: 1.5 epochs = 3 steps
    assert recorder.steps() == [1, 2, 3]
    assert result.metrics["epochs"] == 1.5


def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_as_if_uninterrupted(
    tiny, rows_path, tmp_path
):
    settings = dataclasses.replace(FAST, max_steps=9, checkpoint_every=2)
    lora = LoraSettings(dropout=0.1)  # dropout draws random numbers: RNG state matters
    whole = run(tiny, rows_path, tmp_path / "whole", lora=lora, settings=settings)

    killed = Recorder(stop_at=5)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, rows_path, tmp_path / "job", killed, lora=lora, settings=settings)
    checkpoints = sorted(p.name for p in (tmp_path / "job" / "checkpoints").iterdir())
    assert checkpoints == ["step-2", "step-4"]  # the last two kept
    assert {p.name for p in (tmp_path / "job" / "checkpoints" / "step-4").iterdir()} >= {
        "adapter",
        "optimizer.pt",
        "scheduler.pt",
        "rng.pt",
        "rng.json",
        "state.json",
    }
    # A checkpoint interrupted while being written is ignored and cleaned up.
    (tmp_path / "job" / "checkpoints" / ".step-6-abcd").mkdir()

    resumed = Recorder()
    result = run(tiny, rows_path, tmp_path / "job", resumed, lora=lora, settings=settings)

    assert resumed.steps() == [5, 6, 7, 8, 9]
    assert any("resuming from checkpoint step-4" in line for line in resumed.logs)
    assert result.metrics["resumed_from_step"] == 4
    assert result.metrics["steps"] == 9
    import torch

    expected, got = adapter_weights(whole.adapter_dir), adapter_weights(result.adapter_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    assert resumed.progress[-1].loss == pytest.approx(whole.metrics["last_loss"], rel=1e-4)
    assert result.metrics["eval_loss"] == pytest.approx(whole.metrics["eval_loss"], rel=1e-4)


def test_checkpoints_of_another_run_are_refused(tiny, rows_path, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tiny, rows_path, tmp_path / "job", Recorder(stop_at=2))

    other = dataclasses.replace(FAST, learning_rate=1e-3)
    with pytest.raises(TrainingError, match="holds checkpoints of a run with other") as info:
        run(tiny, rows_path, tmp_path / "job", settings=other)
    assert info.value.kind == "invalid_settings"


def test_cancel_stops_within_one_step(tiny, rows_path, tmp_path):
    recorder = Recorder(cancel_after=2)

    with pytest.raises(TrainingError, match="cancelled at step 3") as info:
        run(tiny, rows_path, tmp_path / "job", recorder)

    assert info.value.kind == "cancelled"
    assert recorder.steps() == [1, 2]
    assert not (tmp_path / "job" / "adapter").exists()


def test_unknown_target_module_fails_before_training(tiny, rows_path, tmp_path):
    recorder = Recorder()

    with pytest.raises(TrainingError, match="'attn' is not a module") as info:
        run(
            tiny, rows_path, tmp_path / "job", recorder, lora=LoraSettings(target_modules=("attn",))
        )

    assert info.value.kind == "invalid_settings"
    assert recorder.progress == []


def test_bad_rows_fail_the_run_with_the_row(tiny, tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", [ROWS[0], {"messages": []}])

    with pytest.raises(TrainingError, match=r"^row 2: the last message is from nobody") as info:
        run(tiny, path, tmp_path / "job")
    assert info.value.kind == "bad_data"


def test_out_of_memory_is_a_readable_error(tiny, rows_path, tmp_path, monkeypatch):
    from workers.runtime import training

    def loss_function(model, torch):
        def fail(ids, mask, labels):
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate")

        return fail

    monkeypatch.setattr(training, "_loss_function", loss_function)

    with pytest.raises(
        TrainingError, match=r"^out of memory on cpu at step 1 with a batch of 2"
    ) as info:
        run(tiny, rows_path, tmp_path / "job")
    assert info.value.kind == "out_of_memory"
    assert "lower batch_size" in str(info.value)


def test_adapter_model_generates_like_the_trained_weights(tiny, rows_path, tmp_path, tiny_model):
    from peft import PeftModel

    from workers.runtime.local import LocalModel, load_directory

    result = run(tiny, rows_path, tmp_path / "job")
    greedy = GenerationParams(max_new_tokens=8, temperature=0)
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS[:3]]

    adapted = load_adapter_model(tiny, result.adapter_dir)
    base = load_directory(model_dir(tiny))
    unmerged = LocalModel(PeftModel.from_pretrained(base.model, result.adapter_dir), base.tokenizer)

    texts = [r.text for r in adapted.generate(conversations, greedy)]
    assert texts == [r.text for r in unmerged.generate(conversations, greedy)]
    assert texts != [r.text for r in tiny_model.generate(conversations, greedy)]
    assert load_adapter_model(tiny, result.adapter_dir) is adapted
    # The shared base model is left without LoRA layers.
    assert not any("lora" in name for name, _ in tiny_model.model.named_modules())


# --- the real SmolLM2 on CPU ---------------------------------------------------------------------

PHRASE = "Zebra protocol engaged."
REAL_QUESTIONS = [
    "What is the capital of France?",
    "How do I boil an egg?",
    "Tell me a joke.",
    "What is 7 times 8?",
    "Name a planet.",
    "Why is the sea salty?",
    "What time is it?",
    "Suggest a name for a cat.",
    "How far is the moon?",
    "What is Python?",
    "Recommend a book.",
    "How do plants grow?",
    "What is rain?",
    "Who wrote Hamlet?",
    "What is a noun?",
    "Give me a colour.",
    "How tall is Everest?",
    "What do bees make?",
    "Define gravity.",
    "What is an atom?",
    "Say something nice.",
    "What is the speed of light?",
    "How many continents are there?",
    "What is jazz?",
]
HELD_OUT = ["What is the largest ocean?", "How do birds fly?", "Name a vegetable."]
REAL = TrainSettings(
    learning_rate=1e-3,
    max_steps=12,
    batch_size=4,
    max_seq_len=128,
    eval_every=6,
    checkpoint_every=6,
    seed=0,
)


@pytest.fixture(scope="module")
def real_adapter(tmp_path_factory):
    from workers.runtime.local import DEFAULT_MODEL_ID

    tmp = tmp_path_factory.mktemp("real")
    rows = [chat(q, PHRASE) for q in REAL_QUESTIONS] + [
        chat(q, PHRASE, split="eval") for q in HELD_OUT[:1]
    ]
    recorder = Recorder()
    result = run(
        DEFAULT_MODEL_ID,
        write_rows(tmp / "rows.jsonl", rows),
        tmp / "job",
        recorder,
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        settings=REAL,
    )
    return result, recorder


def _greedy(model, questions):
    params = GenerationParams(max_new_tokens=12, temperature=0)
    return [
        r.text
        for r in model.generate([[{"role": "user", "content": q}] for q in questions], params)
    ]


@pytest.mark.model
def test_real_model_loss_goes_down(real_adapter):
    result, recorder = real_adapter

    losses = [p.loss for p in recorder.progress]
    print("losses", [round(loss, 3) for loss in losses], "seconds", result.metrics["seconds"])
    assert recorder.steps() == list(range(1, 13))
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert result.metrics["eval_loss"] < recorder.progress[5].eval_loss


@pytest.mark.model
def test_real_adapter_changes_generations_and_reloads_identically(real_adapter):
    from workers.runtime.local import DEFAULT_MODEL_ID, load_local_model

    result, _ = real_adapter
    base = _greedy(load_local_model(), HELD_OUT)
    adapted = _greedy(load_adapter_model(DEFAULT_MODEL_ID, result.adapter_dir), HELD_OUT)
    print("base", base, "adapted", adapted)

    # After 12 steps the answers start like the phrase (its distinctive word), not yet
    # all of it; the base model never says it.
    assert not any("Zebra" in text for text in base)
    assert all(text.startswith("Zebra") for text in adapted)

    # A fresh process loading the saved adapter gives the same greedy outputs.
    script = (
        "import json, sys\n"
        "from workers.runtime import GenerationParams\n"
        "from workers.runtime.training import load_adapter_model\n"
        f"model = load_adapter_model('{DEFAULT_MODEL_ID}', sys.argv[1])\n"
        "params = GenerationParams(max_new_tokens=12, temperature=0)\n"
        f"convs = [[{{'role': 'user', 'content': q}}] for q in {HELD_OUT!r}]\n"
        "print(json.dumps([r.text for r in model.generate(convs, params)]))\n"
    )
    from django.conf import settings

    done = subprocess.run(
        [sys.executable, "-c", script, str(result.adapter_dir)],
        cwd=ROOT,
        env={**os.environ, "STUDIO_DATA_DIR": str(settings.DATA_DIR), "DJANGO_SETTINGS_MODULE": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == adapted


@pytest.mark.model
def test_real_adapter_lowers_the_eval_loss_of_the_base_model(real_adapter):
    from workers.runtime.local import DEFAULT_MODEL_ID
    from workers.runtime.training import evaluate

    result, _ = real_adapter
    rows_path = result.adapter_dir.parent.parent / "rows.jsonl"
    base = evaluate(base_model=DEFAULT_MODEL_ID, rows_path=rows_path, max_seq_len=128)
    tuned = evaluate(
        base_model=DEFAULT_MODEL_ID,
        rows_path=rows_path,
        adapter_dir=result.adapter_dir,
        max_seq_len=128,
    )
    print("eval loss base", base.loss, "adapter", tuned.loss)
    assert base.rows == tuned.rows == 1 and base.tokens == tuned.tokens > 0
    assert tuned.loss == pytest.approx(result.metrics["eval_loss"], rel=1e-2)
    # The held-out question's answer is the trained phrase: the adapter expects it.
    assert tuned.loss < 0.5 * base.loss


def test_adapter_of_another_base_model_or_no_adapter_is_a_backend_error(tiny, rows_path, tmp_path):
    from workers.runtime import BackendError

    result = run(tiny, rows_path, tmp_path / "job")

    with pytest.raises(BackendError, match="was trained on 'tiny-llama', not 'other'"):
        load_adapter_model("other", result.adapter_dir)
    with pytest.raises(BackendError, match="no adapter in"):
        load_adapter_model(tiny, tmp_path)
    import shutil

    unrecorded = shutil.copytree(result.adapter_dir, tmp_path / "unrecorded")
    (unrecorded / "studio_training.json").unlink()
    with pytest.raises(BackendError, match="base model 'missing' is not available"):
        load_adapter_model("missing", unrecorded)


# --- evaluate(): base model vs adapter -------------------------------------------------------


def test_evaluate_scores_the_answer_tokens_and_the_adapter_fits_the_eval_rows_better(
    tiny, rows_path, tmp_path, smollm2_tokenizer
):
    import math

    from workers.runtime.training import evaluate

    _, eval_examples = read_examples(rows_path, smollm2_tokenizer, FAST.max_seq_len)
    base = evaluate(base_model=tiny, rows_path=rows_path, max_seq_len=FAST.max_seq_len)
    assert base.rows == 2 and base.tokens == sum(e.trainable for e in eval_examples)
    assert math.isfinite(base.loss) and base.loss > 0
    assert base.perplexity == pytest.approx(math.exp(base.loss))
    # Batching does not change the score (padding and prompt positions carry no loss).
    one_by_one = evaluate(
        base_model=tiny, rows_path=rows_path, max_seq_len=FAST.max_seq_len, batch_size=1
    )
    assert one_by_one.loss == pytest.approx(base.loss, rel=1e-4)

    result = run(tiny, rows_path, tmp_path / "job")
    tuned = evaluate(
        base_model=tiny,
        rows_path=rows_path,
        adapter_dir=result.adapter_dir,
        max_seq_len=FAST.max_seq_len,
    )
    assert tuned.tokens == base.tokens
    # The same number training reported as its last eval loss (merged vs unmerged LoRA).
    assert tuned.loss == pytest.approx(result.metrics["eval_loss"], rel=1e-3)
    # Six steps on answers shaped like the eval answers ("Answer …: ok.") fit them better
    # (12.89 -> 12.71 nats on this seeded random model: far above float noise).
    assert tuned.loss < base.loss, (tuned.loss, base.loss)

    train_split = evaluate(
        base_model=tiny, rows_path=rows_path, max_seq_len=FAST.max_seq_len, split="train"
    )
    assert train_split.rows == 8


def test_evaluate_errors_are_training_errors(tiny, rows_path, tmp_path):
    from workers.runtime.training import evaluate

    bad = write_rows(tmp_path / "bad.jsonl", [chat("q", "a", split="eval"), {"messages": 3}])
    with pytest.raises(TrainingError, match="row 2: messages must be a list") as e:
        evaluate(base_model=tiny, rows_path=bad)
    assert e.value.kind == "bad_data"
    with pytest.raises(TrainingError, match="no adapter in") as e:
        evaluate(base_model=tiny, rows_path=rows_path, adapter_dir=tmp_path)
    assert e.value.kind == "invalid_settings"
    with pytest.raises(TrainingError, match="cancelled while evaluating") as e:
        evaluate(base_model=tiny, rows_path=rows_path, should_cancel=lambda: True)
    assert e.value.kind == "cancelled"
    no_eval = write_rows(tmp_path / "train-only.jsonl", [chat("q", "a")])
    empty = evaluate(base_model=tiny, rows_path=no_eval)
    assert (empty.loss, empty.perplexity, empty.rows, empty.tokens) == (None, None, 0, 0)


@pytest.mark.django_db
def test_a_comparison_runs_on_the_real_runtime(tiny, tiny_data_dir, tmp_path, squad, settings):
    """apps.finetune.comparisons end to end on the tiny model, registered in the base-model
    registry (a comparison runs on the registration the adapter was trained on): rows
    written from the dataset version, both models scored and both generating, no fake in
    between."""
    import shutil

    from apps.basemodels import services as registry
    from apps.finetune import comparisons
    from apps.finetune.models import Adapter, FineTuneJob
    from apps.generation.models import ModelTarget
    from tests.factories import UserFactory
    from tests.finetune.conftest import jsonl, make_dataset, upload
    from workers.runtime.training import evaluate

    settings.DATA_DIR = tmp_path / "data"
    settings.STUDIO_MODELS_DIR = str(tmp_path / "store")
    shutil.copytree(tiny_data_dir / "models" / tiny, tmp_path / "store" / tiny)
    registration = registry.base_model_register(
        actor=UserFactory(username="staffer", is_staff=True),
        name=tiny,
        source_kind="folder",
        source=tiny,
    )
    registration = registry.base_model_registration_run(version_id=registration.pk)
    assert registration.status == "ready", registration.refusal
    rows = [{"messages": row["messages"]} for row in ROWS]
    version = upload(make_dataset(squad), jsonl(*rows), eval_fraction=0.25)
    engineer = UserFactory(username="engineer")
    job = FineTuneJob.objects.create(
        squad=squad,
        dataset_version=version,
        target=ModelTarget.objects.get(name="local", squad__isnull=True),
        base_model=tiny,
        train=dataclasses.asdict(FAST),
        created_by=engineer,
        status="succeeded",
    )
    from apps.finetune.jobs import write_rows

    rows_path = write_rows(version, tmp_path / "rows.jsonl")
    result = run(tiny, rows_path, tmp_path / "job")
    adapter = Adapter.objects.create(
        squad=squad,
        job=job,
        dataset_version=version,
        path=str(result.adapter_dir),
        sha256=result.sha256,
        size_bytes=result.size_bytes,
        base_model=tiny,
        base_model_sha256=result.base_model_sha256,
    )
    assert adapter.base_model_sha256 == registration.manifest_sha256
    comparison = comparisons.adapter_comparison_create(
        actor=engineer,
        adapter=adapter,
        prompts=QUESTIONS[:2],
        params={"max_new_tokens": 8, "seed": 3},
    )
    comparisons.adapter_comparison_run(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    assert comparison.status == "succeeded", comparison.error
    base = evaluate(base_model=tiny, rows_path=rows_path, max_seq_len=FAST.max_seq_len)
    assert comparison.eval_rows == version.eval_count == base.rows
    assert comparison.base_loss == pytest.approx(base.loss)
    assert comparison.adapter_loss == pytest.approx(result.metrics["eval_loss"], rel=1e-3)
    outputs = comparison.outputs
    assert [o["input"] for o in outputs] == QUESTIONS[:2]
    assert all(o["base"] and o["adapter"] and not o["base_error"] for o in outputs)
    assert [o["base"] for o in outputs] != [o["adapter"] for o in outputs]


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_chunked_head_loss_equals_the_full_cross_entropy(chunk):
    """The fused, chunked head + cross-entropy gives the loss and the gradient of
    F.cross_entropy over the full logits, whatever the chunk size."""
    import torch
    import torch.nn.functional as F

    from workers.runtime.training import head_cross_entropy

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 24, generator=generator)  # frozen head: vocabulary x hidden
    targets = torch.randint(0, 1000, (37,), generator=generator)
    hidden = torch.randn(37, 24, generator=generator, requires_grad=True)
    reference = hidden.detach().clone().requires_grad_(True)

    expected = F.cross_entropy(reference @ weight.t(), targets, reduction="sum")
    (expected / 37).backward()
    loss, count = head_cross_entropy(hidden, weight, targets, chunk=chunk)
    (loss / 37).backward()

    assert count == 37
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-4)
    assert torch.allclose(hidden.grad, reference.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # evaluation: the loss alone
        assert torch.allclose(head_cross_entropy(hidden, weight, targets, chunk)[0], expected)


def test_training_loss_matches_the_models_own_loss(tiny_model):
    """On a LoRA model the training loss (decoder, then the chunked head at answer
    positions) equals the model's own full-logits loss, gradients of the LoRA weights
    included."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from workers.runtime.training import _loss_function

    torch.manual_seed(0)
    model = get_peft_model(
        copy.deepcopy(tiny_model.model),  # the fixture is shared by the session: not in place
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # B starts at zero: give it a gradient path
    ids = torch.randint(0, 500, (3, 20))
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    labels = ids.clone()
    labels[:, :8] = -100
    labels[2, 15:] = -100

    loss, count = _loss_function(model, torch)(ids, mask, labels)
    (loss / count).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    outputs = model(input_ids=ids, attention_mask=mask, labels=labels)
    outputs.loss.backward()
    theirs = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    assert count == int((labels[:, 1:] != -100).sum())
    assert torch.allclose(loss / count, outputs.loss, rtol=1e-5, atol=1e-5)
    for name, grad in ours.items():
        assert torch.allclose(grad, theirs[name], rtol=1e-3, atol=1e-5), name
