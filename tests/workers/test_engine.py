"""The continuous-batching decode loop (workers/runtime/engine.py) on the tiny random Llama:
rows join and leave between steps, the batch size follows the KV-cache budget, and each
row keeps its own parameters and adapter inside a shared batch."""

import copy

import pytest

from workers.runtime import BackendError, GenerationParams
from workers.runtime import engine as engine_module
from workers.runtime.engine import PREFIX_MIN_TOKENS, Engine, Sequence
from workers.runtime.local import LocalModel

from .test_local_runtime import CONVERSATIONS


def greedy(n: int, stop: tuple[str, ...] = ()) -> GenerationParams:
    return GenerationParams(max_new_tokens=n, temperature=0, stop=stop)


def alone(model: LocalModel, conversation, params: GenerationParams, adapter=None, engine=None):
    engine = engine or Engine(model)
    [outcome] = engine.run([Sequence(model.prompt_ids(conversation), params, adapter=adapter)])
    return outcome


@pytest.fixture
def forward_rows(tiny_model, monkeypatch):
    """The number of rows of every forward pass (every prompt prefilled whole: no
    shared-start forwards in between)."""
    monkeypatch.setattr(engine_module, "PREFIX_MIN_TOKENS", 10**9)
    forward = tiny_model.model.forward
    rows: list[int] = []

    def spy(**kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return forward(**kwargs)

    monkeypatch.setattr(tiny_model.model, "forward", spy)
    return rows


def test_a_waiting_row_joins_as_soon_as_a_row_finishes(tiny_model, forward_rows):
    plans = [(CONVERSATIONS[0], 3), (CONVERSATIONS[1], 8), (CONVERSATIONS[3], 8)]
    expected = [alone(tiny_model, conv, greedy(n)) for conv, n in plans]
    forward_rows.clear()

    sequences = [Sequence(tiny_model.prompt_ids(conv), greedy(n)) for conv, n in plans]
    outcomes = Engine(tiny_model, max_rows=2).run(sequences)

    assert outcomes == expected
    # rows 0 and 1 start; row 0 leaves after 3 tokens and row 2 is prefilled at the next
    # step (1 row), then decodes beside row 1 until row 1 ends; row 2 finishes alone.
    assert forward_rows == [2, 2, 2, 1, 2, 2, 2, 2, 2, 1, 1]


def test_the_batch_size_follows_the_memory_budget_and_the_lengths(tiny_model):
    short = [Sequence(tiny_model.prompt_ids(CONVERSATIONS[0]), greedy(4)) for _ in range(6)]
    reserved = short[0].reserved
    budget = Engine(tiny_model).bytes_per_token * reserved * 3

    engine = Engine(tiny_model, kv_budget_bytes=budget)
    engine.run(short)
    assert engine.peak_rows == 3

    longer = [Sequence(tiny_model.prompt_ids(CONVERSATIONS[0]), greedy(reserved)) for _ in range(4)]
    engine = Engine(tiny_model, kv_budget_bytes=budget)
    outcomes = engine.run(longer)
    assert engine.peak_rows == 1  # twice as long: each row alone
    assert all(o.output_tokens == reserved for o in outcomes)


def test_a_row_larger_than_the_budget_fails_alone(tiny_model):
    fits = Sequence(tiny_model.prompt_ids(CONVERSATIONS[0]), greedy(4))
    engine = Engine(tiny_model, kv_budget_bytes=Engine(tiny_model).bytes_per_token * 40)
    too_big = Sequence(tiny_model.prompt_ids(CONVERSATIONS[4]), greedy(30))

    ok, failed = engine.run([fits, too_big])

    assert ok.output_tokens == 4
    assert isinstance(failed, BackendError) and "KV-cache budget" in str(failed)


def test_each_row_keeps_its_own_parameters_in_a_shared_batch(tiny_model):
    [plain] = [alone(tiny_model, CONVERSATIONS[2], greedy(12))]
    stop = plain.text[3:6]
    plans = [
        (CONVERSATIONS[0], greedy(5)),
        (CONVERSATIONS[1], GenerationParams(max_new_tokens=9, temperature=1.0, seed=11)),
        (CONVERSATIONS[2], greedy(12, stop=(stop,))),
        (CONVERSATIONS[3], GenerationParams(max_new_tokens=7, temperature=0.8, top_p=0.9, seed=3)),
        (CONVERSATIONS[4], greedy(10)),
    ]
    expected = [alone(tiny_model, conv, params) for conv, params in plans]

    together = Engine(tiny_model).run(
        [Sequence(tiny_model.prompt_ids(conv), params) for conv, params in plans]
    )

    assert together == expected
    assert [o.output_tokens for o in together][:2] == [5, 9]
    assert together[2].text == plain.text[: plain.text.index(stop)]
    assert together[2].finish_reason == "stop"


def test_a_streamed_row_never_shows_its_stop_string(tiny_model):
    [plain] = [alone(tiny_model, CONVERSATIONS[1], greedy(12))]
    stop = plain.text[4:8]
    sequence = Sequence(tiny_model.prompt_ids(CONVERSATIONS[1]), greedy(12, (stop,)), stream=True)

    [outcome] = Engine(tiny_model).run([sequence])

    pieces = []
    while not sequence.events.empty():
        kind, value = sequence.events.get()
        if kind == "text":
            pieces.append(value)
    assert "".join(pieces) == outcome.text == plain.text[: plain.text.index(stop)]
    assert all(stop not in "".join(pieces[: i + 1]) for i in range(len(pieces)))


def test_a_cancelled_row_leaves_the_batch(tiny_model, forward_rows):
    engine = Engine(tiny_model)
    kept = engine.submit(Sequence(tiny_model.prompt_ids(CONVERSATIONS[0]), greedy(6)))
    dropped = engine.submit(Sequence(tiny_model.prompt_ids(CONVERSATIONS[1]), greedy(6)))
    engine.step()
    engine.cancel(dropped)
    while kept.outcome is None:
        engine.step()

    assert isinstance(dropped.outcome, BackendError) and str(dropped.outcome) == "cancelled"
    assert kept.outcome.output_tokens == 6
    assert forward_rows == [2, 1, 1, 1, 1, 1]


def save_random_lora(model: LocalModel, directory) -> None:
    """A LoRA adapter (r 4 on q_proj and v_proj, random, seeded) for `model` in `directory`."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    lora = get_peft_model(
        copy.deepcopy(model.model),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(directory)


def test_rows_with_and_without_an_adapter_share_a_batch(tiny_model, tmp_path):
    save_random_lora(tiny_model, tmp_path / "adapter")
    model = LocalModel(copy.deepcopy(tiny_model.model), tiny_model.tokenizer)
    engine = Engine(model)
    engine.load_adapter("a1", tmp_path / "adapter")
    plans = [(CONVERSATIONS[i], None if i % 2 else "a1") for i in range(4)]
    expected = [alone(model, conv, greedy(8), adapter, engine) for conv, adapter in plans]

    together = engine.run(
        [Sequence(model.prompt_ids(conv), greedy(8), adapter=a) for conv, a in plans]
    )

    assert together == expected
    base = [alone(tiny_model, conv, greedy(8)) for conv, _ in plans]
    assert [expected[1], expected[3]] == [base[1], base[3]]  # "__base__" rows: the base model
    assert expected[0] != base[0] and expected[2] != base[2]


def test_a_failing_step_fails_its_rows_instead_of_hanging_them(tiny_model, monkeypatch):
    def broken(**kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(tiny_model.model, "forward", broken)
    engine = Engine(tiny_model)
    engine.start()
    try:
        sequence = engine.submit(Sequence(tiny_model.prompt_ids(CONVERSATIONS[0]), greedy(4)))
        outcome = sequence.result(timeout=30)
    finally:
        engine.stop()

    assert isinstance(outcome, BackendError)
    assert str(outcome) == "the decode loop failed: ValueError: a bug"


def test_bf16_as_on_cuda_halves_the_kv_cost_and_decodes_the_same_way(tiny_model):
    import torch

    bf16 = LocalModel(copy.deepcopy(tiny_model.model).to(torch.bfloat16), tiny_model.tokenizer)
    engine = Engine(bf16)

    assert engine.bytes_per_token * 2 == Engine(tiny_model).bytes_per_token
    plans = [(CONVERSATIONS[i], greedy(4 + i)) for i in range(4)]
    expected = [alone(bf16, conv, params) for conv, params in plans]
    together = engine.run([Sequence(bf16.prompt_ids(conv), params) for conv, params in plans])
    assert together == expected
    assert [o.output_tokens for o in together] == [4, 5, 6, 7]


def test_the_kv_budget_setting(tiny_model, monkeypatch):
    monkeypatch.setenv("STUDIO_LOCAL_KV_BUDGET_MB", "1.5")

    assert Engine(tiny_model).kv_budget == 1.5 * 2**20


def test_a_shared_prompt_start_is_prefilled_once_and_changes_no_output(
    tiny_model, forward_rows, monkeypatch
):
    """Prompts that start alike (the chat template's system prompt here) prefill that
    start once; what each row generates is what it generates with every prompt prefilled
    whole, and the rows' prefill forward runs only the rest of each prompt."""
    system = "You answer in French, briefly and politely, in full sentences, without lists."
    questions = ("Apples or pears?", "Bread: how?", "Cheese from where?", "Dates, why?")
    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": question}]
        for question in questions
    ]
    prompts = [tiny_model.prompt_ids(conv) for conv in conversations]
    shared = next(i for i, column in enumerate(zip(*prompts, strict=False)) if len(set(column)) > 1)
    assert shared >= PREFIX_MIN_TOKENS
    whole = Engine(tiny_model).run([Sequence(p, greedy(6)) for p in prompts])  # no sharing
    monkeypatch.setattr(engine_module, "PREFIX_MIN_TOKENS", PREFIX_MIN_TOKENS)
    forward_rows.clear()

    engine = Engine(tiny_model)
    outcomes = engine.run([Sequence(p, greedy(6)) for p in prompts])

    assert outcomes == whole
    assert engine.prefix_hits == 4
    assert len(engine.prefixes) == 1
    [(adapter, start)] = engine.prefixes
    assert adapter is None and len(start) == shared
    # the start alone (1 row), then the four rows prefilled from it, then decoding
    assert forward_rows[:2] == [1, 4] and set(forward_rows[2:]) <= {1, 2, 3, 4}

    # a later prompt with the same start reuses the kept KV: no batch-of-one forward
    forward_rows.clear()
    [again] = engine.run([Sequence(prompts[2], greedy(6))])
    assert again == whole[2]
    assert forward_rows[0] == 1 and engine.prefix_hits == 5
    assert len(forward_rows) == 6  # prefill + 5 decode steps: the start was not recomputed
