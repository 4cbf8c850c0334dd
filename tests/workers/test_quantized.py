"""Precision q4 (workers/runtime/quantized.py): 4-bit decoder weights with bf16 activations
in inference, fp32 for training, and an output head whose greedy pick is fp32's."""

import copy

import pytest

from workers.runtime import GenerationParams
from workers.runtime.engine import Engine, Sequence
from workers.runtime.local import LocalModel

from .test_engine import save_random_lora
from .test_local_runtime import CONVERSATIONS

torch = pytest.importorskip("torch")
quantized = pytest.importorskip("workers.runtime.quantized")
pytestmark = pytest.mark.skipif(not quantized.q4_supported(), reason="no int4 CPU kernel")

GREEDY = GenerationParams(max_new_tokens=8, temperature=0)


def q4_blocks(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """A weight as llama.cpp's Q4_1 dequantizes it: per 32 inputs, q * d + m with q in
    0..15 and d, m fp16 values."""
    generator = torch.Generator().manual_seed(seed)
    groups = in_features // 32
    q = torch.randint(0, 16, (out_features, groups, 32), generator=generator).float()
    q[..., 0], q[..., 1] = 0, 15  # the block's minimum and maximum, as the quantizer leaves
    d = (torch.rand(out_features, groups, 1, generator=generator) / 64).half().float()
    m = (-torch.rand(out_features, groups, 1, generator=generator) / 8).half().float()
    return (q * d + m).reshape(out_features, in_features)


def test_q4_1_weights_are_regrouped_into_their_own_4_bit_values():
    # the kernel takes each block's step and zero point (minimum + 8 steps) in bf16: that
    # rounding is all that is lost, the 4-bit values are the block's own
    weight = q4_blocks(96, 128)
    *_, error = quantized.pack(weight)
    assert 0 < error < 2**-7
    # regrouping found the right 4-bit values: the same blocks with steps and zero points
    # that bf16 holds exactly come back without error
    q = torch.randint(0, 16, (16, 2, 32)).float()
    q[..., 0], q[..., 1] = 0, 15
    exact = (q * 2.0**-6 - 8 * 2.0**-6 + 0.25).reshape(16, 64)
    assert quantized.pack(exact)[2] == 0
    linear = torch.nn.Linear(128, 96, bias=False)
    linear.weight.data = weight
    layer = quantized.Q4Linear(linear)
    x = torch.randn(5, 1, 128)
    with torch.inference_mode():
        got = layer(x)
    exact = torch.nn.functional.linear(x, weight)
    assert got.shape == exact.shape and got.dtype == torch.float32
    assert torch.allclose(got, exact, rtol=0.02, atol=0.02 * exact.abs().max().item())


def test_a_q4_layer_is_fp32_for_training_and_row_independent_in_inference():
    linear = torch.nn.Linear(64, 48)
    layer = quantized.Q4Linear(copy.deepcopy(linear))
    step = torch.randn(2, 1, 64)
    assert torch.equal(layer(step), linear(step))  # gradients enabled: fp32
    layer(step).sum().backward()
    assert layer.weight.grad is not None
    prompt = torch.randn(6, 7, 64)
    with torch.inference_mode():
        together = layer(prompt)
        alone = torch.cat([layer(prompt[i : i + 1, :3]) for i in range(6)])
    assert not torch.equal(together, linear(prompt))  # the 4-bit path
    assert torch.equal(together[:, :3], alone)  # a row's result does not depend on the batch
    # what the kernel cannot pack (output width not a multiple of 16) stays an nn.Linear
    model = quantized.to_q4(torch.nn.Sequential(torch.nn.Linear(64, 40), torch.nn.Linear(40, 64)))
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.Linear]


def test_the_head_picks_what_fp32_logits_pick():
    torch.manual_seed(3)
    linear = torch.nn.Linear(64, 5000, bias=False)
    head = quantized.Q4Head(linear)
    hidden = torch.randn(400, 1, 64) * 4
    # near-ties: rows whose best two fp32 logits differ by about one bf16 rounding
    top2 = torch.nn.functional.linear(hidden, linear.weight).topk(2, dim=-1).indices[..., 0, :]
    gap = linear.weight[top2[:, 0]] - linear.weight[top2[:, 1]]
    hidden[:200, 0] -= (
        gap[:200]
        * ((hidden[:200, 0] * gap[:200]).sum(-1, keepdim=True) - 1e-4)
        / (gap[:200] * gap[:200]).sum(-1, keepdim=True)
    )
    with torch.inference_mode():
        fast = head(hidden)
    exact = torch.nn.functional.linear(hidden, linear.weight)
    assert fast.shape == exact.shape
    assert torch.equal(fast.argmax(-1), exact.argmax(-1))
    # the picked logit is fp32's own value; the rest are within the bf16 product's error
    picked = exact.argmax(-1, keepdim=True)
    assert torch.allclose(fast.gather(-1, picked), exact.gather(-1, picked), rtol=1e-5)
    assert (fast - exact).abs().max() < 0.05 * exact.abs().max()
    assert 0 < head.corrected < 400 * 5000 / 10  # a few candidates per row, not all


def test_q4_decodes_and_serves_an_adapter(tiny_model, tmp_path):
    from workers.runtime.local import precision_of, with_precision

    save_random_lora(tiny_model, tmp_path / "adapter")
    model = LocalModel(with_precision(copy.deepcopy(tiny_model.model), "q4"), tiny_model.tokenizer)
    assert precision_of(model.model) == "q4"
    assert isinstance(model.model.model.layers[0].mlp.down_proj, quantized.Q4Linear)
    assert isinstance(model.model.lm_head, quantized.Q4Head)

    base = Engine(model).run([Sequence(model.prompt_ids(c), GREEDY) for c in CONVERSATIONS])
    assert all(r.output_tokens > 0 for r in base)

    engine = Engine(model)
    engine.load_adapter("a1", tmp_path / "adapter")
    plans = [(c, None if i % 2 else "a1") for i, c in enumerate(CONVERSATIONS[:4])]
    mixed = engine.run([Sequence(model.prompt_ids(c), GREEDY, adapter=a) for c, a in plans])
    assert [mixed[1], mixed[3]] == [base[1], base[3]]  # rows without the adapter: the base
    assert mixed[0] != base[0] or mixed[2] != base[2]  # the adapter changes its rows
