"""A stand-in for workers.runtime.training with its interface, for the service tests: no
torch, a few milliseconds per job. It trains nothing; it counts steps, checkpoints the
step number in the work dir (so a second run resumes after it), honours should_cancel at
every step, and can be told to fail with a TrainingError kind at a given step.
evaluate() returns fixed losses (base 2.0, adapter 1.5) over the rows of the split."""

import hashlib
import json
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KNOWN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 512
    seed: int = 0
    eval_every: int = 20
    checkpoint_every: int = 20
    warmup_steps: int = 0
    # recompute activations in the backward pass: slower steps, far less memory
    gradient_checkpointing: bool = False
    # LoRA on a 4-bit (bitsandbytes NF4) base model; needs a CUDA GPU
    qlora: bool = False


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: float
    loss: float
    smoothed_loss: float
    eval_loss: float | None
    tokens_per_second: float
    eta_seconds: float | None
    learning_rate: float


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    sha256: str
    size_bytes: int
    base_model: str
    base_model_sha256: str
    lora_config: dict
    metrics: dict


class TrainingError(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Script:
    """What the next train() calls do; `calls` records each call's starting step."""

    fail_kind: str | None = None
    fail_at: int | None = None
    die_at: int | None = None  # raise SystemExit, as if the process died mid-step
    # raise TrainingError(process_lost) at this step, as a killed training process of a
    # multi-device run does, on the first `lose_times` runs
    lose_at: int | None = None
    lose_times: int = 1
    devices: list[int] = field(default_factory=list)  # each call's devices
    on_step: Callable[[int], None] | None = None
    calls: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    # evaluate(): each call's (adapter_dir, max_seq_len, batch_size); fail with this kind
    evaluations: list[tuple] = field(default_factory=list)
    eval_fail_kind: str | None = None


@dataclass(frozen=True)
class EvalResult:
    loss: float | None
    perplexity: float | None
    rows: int
    tokens: int


def default_target_modules(model_type: str) -> tuple[str, ...]:
    return ("q_proj", "v_proj")


def check_settings(*, base_model: str, lora: LoraSettings, train: TrainSettings) -> list[str]:
    return [
        f"target module '{m}' does not exist in {base_model} (it has {', '.join(KNOWN_MODULES)})"
        for m in lora.target_modules or ()
        if m not in KNOWN_MODULES
    ]


def make_module(script: Script) -> types.ModuleType:
    module = types.ModuleType("workers.runtime.training")

    def train(
        *,
        base_model,
        rows_path,
        lora,
        train,
        work_dir,
        on_progress,
        should_cancel,
        log=print,
        base_model_sha256="",
        devices=1,
    ):
        script.rows = [json.loads(line) for line in Path(rows_path).read_text().splitlines()]
        script.devices.append(devices)
        ckpt = Path(work_dir) / "checkpoint"
        start = int(ckpt.read_text()) if ckpt.exists() else 0
        script.calls.append(start)
        total = train.max_steps or 4
        log(f"training {base_model} from step {start} to {total}")
        for step in range(start + 1, total + 1):
            if should_cancel():
                raise TrainingError("cancelled", "cancelled")
            if script.die_at == step:
                raise SystemExit("killed")
            if script.lose_at == step and script.lose_times > 0:
                script.lose_times -= 1
                raise TrainingError(
                    "training process 1 was killed by SIGKILL; the other processes were "
                    "stopped. The job resumes from its last checkpoint when it runs again.",
                    "process_lost",
                )
            if script.fail_at == step:
                message = {
                    "out_of_memory": "CUDA out of memory at batch size 4; lower batch_size",
                    "bad_data": "row 3 has no assistant message",
                }.get(script.fail_kind, "failed")
                raise TrainingError(message, script.fail_kind)
            if script.on_step:
                script.on_step(step)
            loss = 2.0 / step
            on_progress(
                Progress(
                    step=step,
                    total_steps=total,
                    epoch=step / total,
                    loss=loss,
                    smoothed_loss=loss * 1.1,
                    eval_loss=loss * 1.2 if step % 2 == 0 else None,
                    tokens_per_second=100.0,
                    eta_seconds=float(total - step),
                    learning_rate=train.learning_rate,
                )
            )
            if step % train.checkpoint_every == 0:
                ckpt.write_text(str(step))
        adapter_dir = Path(work_dir) / "adapter"
        adapter_dir.mkdir(parents=True, exist_ok=True)
        content = json.dumps({"r": lora.r, "base": base_model}).encode()
        (adapter_dir / "adapter_config.json").write_bytes(content)
        return TrainResult(
            adapter_dir=adapter_dir,
            sha256=hashlib.sha256(content).hexdigest(),
            size_bytes=len(content),
            base_model=base_model,
            base_model_sha256=base_model_sha256 or "b" * 64,
            lora_config={"r": lora.r, "alpha": lora.alpha, "target_modules": ["q_proj"]},
            metrics={"final_loss": 2.0 / total, "steps": total},
        )

    def evaluate(
        *,
        base_model,
        rows_path,
        adapter_dir=None,
        max_seq_len=512,
        batch_size=4,
        split="eval",
        should_cancel=None,
        base_model_sha256="",
    ):
        """Loss 2.0 for the base model, 1.5 with an adapter, over the split's rows (each
        counted as 10 answer tokens)."""
        script.evaluations.append((adapter_dir, max_seq_len, batch_size))
        if script.eval_fail_kind:
            raise TrainingError(f"row 2: cannot be scored ({script.eval_fail_kind})", "bad_data")
        lines = Path(rows_path).read_text().splitlines()
        rows = sum(1 for line in lines if json.loads(line).get("split") == split)
        if not rows:
            return EvalResult(None, None, 0, 0)
        loss = 1.5 if adapter_dir is not None else 2.0
        return EvalResult(loss, math.exp(loss), rows, rows * 10)

    module.EvalResult = EvalResult
    module.evaluate = evaluate
    module.LoraSettings = LoraSettings
    module.TrainSettings = TrainSettings
    module.Progress = Progress
    module.TrainResult = TrainResult
    module.TrainingError = TrainingError
    module.default_target_modules = default_target_modules
    module.check_settings = check_settings
    module.train = train
    return module


def install(monkeypatch, script: Script) -> types.ModuleType:
    module = make_module(script)
    monkeypatch.setitem(sys.modules, "workers.runtime.training", module)
    import workers.runtime

    monkeypatch.setattr(workers.runtime, "training", module, raising=False)
    return module
