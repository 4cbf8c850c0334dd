"""Precision "q4" on a CPU: the decoder's linear layers run on 4-bit weights in groups of
32 (a scale and a minimum per group, as llama.cpp's Q4_1), with bf16 activations into
those products; embeddings, norms, attention and the residual stream stay fp32, and the
output head picks the token fp32 logits pick (`Q4Head`: a bf16 product, then the logits
that could be the largest recomputed in fp32).

For the default model the 4-bit values are the model's own: SmolLM2's GGUF stores every
decoder weight as Q4_1, and regrouping the converted fp32 weights finds exactly those
values again; only each group's step and zero point (minimum + 8 steps) are rounded to
bf16, which the kernel takes (`pack` returns the resulting weight error: under 2**-7 of
the largest weight).
For other models it is round-to-nearest 4-bit quantization. The bf16 rounding of the
products' inputs and outputs changes some greedy outputs: docs/benchmarks.md has the
agreement with fp32, and llama.cpp's (which rounds activations to 8 bits for the same
products) for comparison.

The products use torch's CPU kernel for 4-bit packed weights
(`aten._weight_int4pack_mm_for_cpu`, the one torchao's int4 weight-only layout calls),
which is fast only with bf16 activations (with fp32 ones it is 20-50x slower than fp32's
matmul). Measured on this 2-core machine, over one token's 30 layers: 5.6 ms against
36 ms for fp32 at 1 row, 13 against 44 at 8 rows, 86 against 102 at 64; for a prompt's
prefill, faster than fp32 up to about 128 tokens and within 15 % of it up to 512 (2
threads; faster at every size on 1). So every product in inference runs on it, prefill
included, and a row's result never depends on what else shares its batch. (Prefill on
the fp32 weights kept 43 of 64 benchmark outputs equal to fp32's against 40, and made a
server's joins slower: docs/benchmarks.md.) Each layer keeps its fp32 weight too: for
products with gradients (training) or on another device, and so that peft can wrap the
layer for LoRA adapters. Memory is therefore fp32's plus about a quarter (the packed
weights and the head's bf16 copy); the gain is in the bytes read per step.
"""

from __future__ import annotations

from typing import Any

import torch

GROUP = 32


def q4_supported() -> bool:
    """Whether this torch has the CPU kernel for 4-bit packed weights."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


class Q4Linear(torch.nn.Linear):
    """An nn.Linear whose products in inference read 4-bit weights (see the module)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        packed, scales_zeros, error = pack(linear.weight.detach())
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_zeros", scales_zeros, persistent=False)
        self.pack_error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.is_grad_enabled():
            return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed, GROUP, self.scales_zeros
        ).to(x.dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class Q4Head(torch.nn.Linear):
    """The output head under q4: every greedy pick is the one fp32 logits give.

    The product is computed with bf16 weights and inputs (half the bytes of fp32), and
    every logit that could be the largest given the error of that product is then
    recomputed in fp32 from the fp32 weight. The error of logit v is bounded by
    |h| |W_v - bf16(W_v)| + |h - bf16(h)| |bf16(W_v)| (Cauchy-Schwarz), plus the bf16
    rounding of the result and the fp32 accumulation, doubled for safety: a logit whose
    approximation plus its bound falls below the best approximation minus its bound
    cannot be the largest, so the argmax over the corrected logits is fp32's. Logits
    far from the top keep their bf16 value (sampling at a temperature sees them within
    that bound)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        weight = linear.weight.detach()
        weight16 = weight.to(torch.bfloat16)
        self.register_buffer("weight16", weight16, persistent=False)
        self.register_buffer(
            "error_norm", (weight - weight16.float()).norm(dim=1), persistent=False
        )
        self.register_buffer("norm16", weight16.float().norm(dim=1), persistent=False)
        self.corrected = 0  # logits recomputed in fp32 (tests, tuning)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.is_grad_enabled():
            return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, self.in_features).float()
        flat16 = flat.to(torch.bfloat16)
        logits = torch.nn.functional.linear(flat16, self.weight16).float()
        size = flat.norm(dim=1, keepdim=True)
        rounding = (flat - flat16.float()).norm(dim=1, keepdim=True)
        bound = 2 * (
            size * self.error_norm
            + rounding * self.norm16
            + logits.abs() * 2**-8
            + self.in_features * 2**-23 * size * self.norm16
        )
        floor = (logits - bound).amax(dim=1, keepdim=True)
        candidates = (logits + bound >= floor).any(dim=0).nonzero().squeeze(1)
        logits[:, candidates] = flat @ self.weight[candidates].t()
        self.corrected += int(candidates.numel())
        if self.bias is not None:
            logits = logits + self.bias
        return logits.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`weight` [out, in] as 4-bit values per group of 32 inputs (minimum and step of the
    group), packed for the kernel; the scales and zero points in bf16; and the largest
    error of the weights the kernel computes, relative to the largest weight."""
    out_features, in_features = weight.shape
    groups = weight.float().reshape(out_features, in_features // GROUP, GROUP)
    low = groups.amin(-1)
    step = (groups.amax(-1) - low) / 15
    safe = torch.where(step == 0, torch.ones_like(step), step)
    q = torch.round((groups - low[..., None]) / safe[..., None]).clamp(0, 15)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        q.reshape(out_features, in_features).to(torch.int32), 1
    )
    # the kernel computes (q - 8) * scale + zero
    zero = low + 8 * step
    scales_zeros = torch.stack([step.t(), zero.t()], dim=-1).contiguous().to(torch.bfloat16)
    step16, zero16 = scales_zeros[..., 0].t().float(), scales_zeros[..., 1].t().float()
    error = ((q - 8) * step16[..., None] + zero16[..., None] - groups).abs().max()
    scale = groups.abs().max()
    relative = float(error / scale) if scale > 0 else 0.0
    return packed, scales_zeros, relative


def to_q4(model: Any) -> Any:
    """Replace, in place, the output head of `model` by a Q4Head and every other
    nn.Linear whose input width is a multiple of 32 and output width a multiple of 16
    (what the kernel packs) by a Q4Linear; returns `model`,
    marked `studio_precision = "q4"`. Layers that cannot be grouped stay fp32."""
    outputs = getattr(model, "get_output_embeddings", None)
    head = outputs() if outputs is not None else None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child.weight.device.type != "cpu":
                continue
            if child is head:
                setattr(parent, name, Q4Head(child))
            elif child.in_features % GROUP == 0 and child.out_features % 16 == 0:
                setattr(parent, name, Q4Linear(child))
    model.studio_precision = "q4"
    return model
