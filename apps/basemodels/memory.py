"""Memory-aware planning: what a LoRA fine-tune (or serving) of a registered model needs,
against the device budget of the workers. Pure arithmetic, no torch, so the web
process's pre-flight shows it and refuses a job before it is queued.

The estimate (bytes):
- weights: parameters x bytes of the training dtype (fp32 on CPU, bf16 on CUDA; 4-bit
  QLoRA: half a byte a parameter plus a small quantisation overhead);
- LoRA: per targeted projection and layer, r x (in + out) parameters, held in fp32 with
  their gradient and AdamW's two moments (4 x 4 bytes a parameter);
- activations: batch x sequence x hidden x layers x ACTIVATION_FACTOR values in the
  compute dtype, or one layer's worth plus a checkpoint per layer with gradient
  checkpointing; plus the logits at the answer positions (batch x sequence x vocab, fp32);
- a fixed runtime overhead (allocator, CUDA context, tokenizer).
It is deliberately pessimistic (a refused job that would have fit costs less than an
out-of-memory failure after the queue wait), and the pre-flight shows every term.
"""

from dataclasses import dataclass, field
from typing import Any

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}
ACTIVATION_FACTOR = 16  # values kept per token, hidden unit and layer for the backward pass
OVERHEAD_BYTES = 512 * 1024**2
QLORA_BYTES_PER_PARAMETER = 0.5 + 0.06  # 4-bit weights plus block scales
MIB = 1024**2


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    model_type: str = ""


@dataclass
class MemoryPlan:
    device: str
    budget_bytes: int
    terms: dict[str, int]
    fits: bool
    advice: list[dict[str, str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.terms.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "budget_mib": round(self.budget_bytes / MIB),
            "total_mib": round(self.total_bytes / MIB),
            "terms_mib": {k: round(v / MIB, 1) for k, v in self.terms.items()},
            "fits": self.fits,
            "advice": self.advice,
        }


def _lora_parameters(shape: ModelShape, r: int, modules: int) -> int:
    # every targeted projection taken as hidden x hidden: A (r x in) + B (out x r)
    return shape.num_layers * modules * r * 2 * shape.hidden_size


def estimate(
    shape: ModelShape,
    *,
    device: str,
    budget_bytes: int,
    r: int,
    target_modules: int,
    batch_size: int,
    max_seq_len: int,
    gradient_checkpointing: bool,
    qlora: bool = False,
    answer_fraction: float = 1.0,
) -> MemoryPlan:
    compute = 2 if device == "cuda" else 4
    weight_bytes = QLORA_BYTES_PER_PARAMETER if qlora else compute
    tokens = batch_size * max_seq_len
    per_layer = tokens * shape.hidden_size * ACTIVATION_FACTOR * compute
    if gradient_checkpointing:
        activations = per_layer + tokens * shape.hidden_size * compute * shape.num_layers
    else:
        activations = per_layer * shape.num_layers
    terms = {
        "weights": int(shape.parameters * weight_bytes),
        "lora_and_optimizer": _lora_parameters(shape, r, target_modules) * 16,
        "activations": int(activations),
        "logits": int(tokens * answer_fraction * shape.vocab_size * 4 * 2),
        "overhead": OVERHEAD_BYTES,
    }
    plan = MemoryPlan(device=device, budget_bytes=budget_bytes, terms=terms, fits=False)
    plan.fits = plan.total_bytes <= budget_bytes
    if not plan.fits:
        plan.advice = _advice(
            shape,
            device=device,
            budget_bytes=budget_bytes,
            r=r,
            target_modules=target_modules,
            batch_size=batch_size,
            max_seq_len=max_seq_len,
            gradient_checkpointing=gradient_checkpointing,
            qlora=qlora,
            answer_fraction=answer_fraction,
        )
    return plan


def _advice(shape: ModelShape, **given: Any) -> list[dict[str, str]]:
    """The single settings changes that would make the job fit, first the cheapest."""

    def fits(**change: Any) -> bool:
        settings = {**given, **change}
        return estimate(shape, **settings).fits

    out = []
    if not given["gradient_checkpointing"] and fits(gradient_checkpointing=True):
        out.append(
            {
                "field": "train.gradient_checkpointing",
                "message": "turn on gradient checkpointing (slower steps, far fewer "
                "activations kept)",
            }
        )
    batch = given["batch_size"]
    while batch > 1:
        batch //= 2
        if fits(batch_size=batch):
            out.append(
                {
                    "field": "train.batch_size",
                    "message": f"lower batch_size to {batch} (raise grad_accum to keep the "
                    "effective batch)",
                }
            )
            break
    seq = given["max_seq_len"]
    while seq > 64:
        seq //= 2
        if fits(max_seq_len=seq):
            out.append({"field": "train.max_seq_len", "message": f"lower max_seq_len to {seq}"})
            break
    if given["device"] == "cuda" and not given["qlora"] and fits(qlora=True):
        out.append({"field": "train.qlora", "message": "train with QLoRA (4-bit base model)"})
    if not out:
        out.append(
            {
                "field": "base_model",
                "message": "no single setting makes it fit: choose a smaller base model or a "
                "worker with more memory",
            }
        )
    return out
