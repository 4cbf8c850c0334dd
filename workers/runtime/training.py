"""LoRA fine-tuning of a local model with peft: the runtime behind fine-tune jobs.

`train()` reads chat or prompt/completion rows (JSONL, each with `"split": "train"|"eval"`),
trains a LoRA adapter on the train split and writes it to `work_dir/adapter/` with peft's
`save_pretrained` (safetensors). What it does, and why:

- Loss on the answer only. Each row is rendered with the model's chat template (a
  prompt/completion row becomes one user turn and the assistant's answer): the prompt,
  ending with the assistant's turn opener exactly as `LocalModel.prompt_ids` builds it
  for generation, and the answer (the rest of the rendered conversation, end-of-turn
  token included) are tokenized separately; labels are -100 on the prompt. A row over
  `max_seq_len` loses prompt tokens from the left; a row whose answer alone leaves no
  room for a prompt token, or with no answer, is refused (`TrainingError`, kind
  `bad_data`, naming the row), since training on an answer without its question
  teaches the wrong thing.
- Length-grouped batches, padded per batch. Each epoch the train rows are shuffled
  (seeded), cut into windows of 50 x batch_size rows, sorted by length inside each
  window, split into batches, and the batches shuffled. A batch is padded to its own
  longest row, so little compute goes to padding (the speed-up over a `Trainer` with
  random batches; `bench/finetune.py`). The language-model head runs only at the
  positions that have a label (the answer), not over the whole padded batch.
- Loss weighting: the summed token loss of an optimizer step's micro-batches divided by
  its number of answer tokens, so gradient accumulation equals one large batch.
  AdamW (no weight decay), linear warm-up then linear decay, gradients clipped at 1.0:
  the defaults of transformers' `Trainer`.
- Crash safety: every `checkpoint_every` steps `work_dir/checkpoints/step-N/` gets the
  adapter weights, optimizer, scheduler, python/numpy/torch RNG states and the data
  position (epoch, the epoch's batch order, micro-batch index), written to a temporary
  directory that is renamed into place; the last two are kept. Calling `train()` again
  with the same `work_dir` resumes from the newest checkpoint: the step count goes on
  and the data order is the same, so the result matches an uninterrupted run up to
  float nondeterminism. A finished run (its adapter in place) is returned as is.
- Several devices: the loop runs under accelerate's `Accelerator` (`run_training`), in
  this process for one device, or in each of N processes that `accelerate launch`
  starts (`train(devices=N)`, `workers.runtime.distributed`): DDP (or FSDP on GPUs),
  each process taking its share of every global batch, so N devices train what one
  trains, up to float rounding. Checkpoints keep each process's RNG state.
- Threads: as for generation (`local.limit_cpu_threads`), one core is left to the web
  server and broker sharing the machine in the embedded setup; a dedicated worker sets
  OMP_NUM_THREADS to use every core.

`check_settings()` needs no torch: it reads the converted model's `config.json`, so the
web process can refuse unknown target modules by name before a job is queued.

`evaluate()` scores the base model, or the base model with an adapter merged in, on a
split of the same rows with the same masking and batching as the training eval loss
(loss per answer token and perplexity): the comparison page's numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.runtime import BackendError
from workers.runtime.local import DEFAULT_MODEL_ID, LocalModel

LENGTH_WINDOW_BATCHES = 50
KEEP_CHECKPOINTS = 2
MAX_GRAD_NORM = 1.0
SMOOTHING = 0.9  # the smoothed loss is an exponential moving average, bias-corrected
# The embeddings are never trained here; saying so also stops peft from looking the base
# model's name up on the Hugging Face Hub to compare vocabulary sizes.
_SAVE = {"safe_serialization": True, "save_embedding_layers": False}
ARTIFACT_FILES = ("adapter_config.json", "adapter_model.safetensors")
RECORD_FILE = "studio_training.json"

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
# model_type -> (default LoRA targets, every module name LoRA may target)
ARCHITECTURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{
        name: (_ATTENTION, _ATTENTION + _MLP)
        for name in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
        )
    },
    "phi3": (("qkv_proj", "o_proj"), ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    "phi": (("q_proj", "k_proj", "v_proj", "dense"), ("q_proj", "k_proj", "v_proj", "dense")),
    "gpt2": (("c_attn",), ("c_attn", "c_proj", "c_fc")),
    **{
        name: (
            ("query_key_value",),
            ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        )
        for name in ("gpt_neox", "falcon")
    },
}


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: the architecture's default


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None  # when set, wins over epochs
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
    """Training stopped for a reason a person can act on; `kind` is one of KINDS."""

    # process_lost: one of a multi-device run's processes died (killed, or crashed)
    KINDS = ("bad_data", "out_of_memory", "cancelled", "invalid_settings", "process_lost")

    def __init__(self, message: str, *, kind: str) -> None:
        assert kind in self.KINDS, kind
        super().__init__(message)
        self.kind = kind


# --- settings, without torch ----------------------------------------------------------


def default_target_modules(model_type: str) -> tuple[str, ...]:
    """The attention projections of `model_type`'s layers; ValueError for an
    architecture this runtime does not know (then name the modules explicitly)."""
    try:
        return ARCHITECTURES[model_type][0]
    except KeyError:
        raise ValueError(
            f"no default LoRA target modules for model type {model_type!r}; "
            "name them in lora.target_modules"
        ) from None


def check_settings(*, base_model: str, lora: LoraSettings, train: TrainSettings) -> list[str]:
    """Every problem with these settings for `base_model` (a directory name under
    `model_dir()`), as readable strings naming the setting; [] when all is well.

    Reads the converted model's config.json (and, for an architecture not in
    ARCHITECTURES, the tensor names in its safetensors headers); never imports torch.
    """
    from workers.runtime.registry import load_dir_of

    problems = _range_problems(lora, train)
    config_path = load_dir_of(base_model) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        return [*problems, f"base model {base_model!r} cannot be read ({config_path}: {exc})"]
    model_type = config.get("model_type", "")
    if model_type in ARCHITECTURES:
        known = ARCHITECTURES[model_type][1]
    else:
        known = _weight_module_names(config_path.parent)
    targets = lora.target_modules
    if targets is None:
        try:
            targets = default_target_modules(model_type)
        except ValueError as exc:
            problems.append(f"lora.target_modules: {exc}")
            targets = ()
    elif not targets:
        problems.append("lora.target_modules: name at least one module, or none for the default")
    unknown = [name for name in targets if name not in known]
    if unknown:
        problems.append(
            f"lora.target_modules: {', '.join(map(repr, unknown))} "
            f"{'is not a module' if len(unknown) == 1 else 'are not modules'} "
            f"of {model_type or 'this'} models (known: {', '.join(known)})"
        )
    context = config.get("max_position_embeddings")
    if isinstance(context, int) and train.max_seq_len > context:
        problems.append(
            f"train.max_seq_len: {train.max_seq_len} is longer than the model's context "
            f"of {context} tokens"
        )
    return problems


def _range_problems(lora: LoraSettings, train: TrainSettings) -> list[str]:
    checks = [
        ("lora.r", lora.r, 1, 1024),
        ("lora.alpha", lora.alpha, 1e-6, None),
        ("lora.dropout", lora.dropout, 0.0, 0.99),
        ("train.learning_rate", train.learning_rate, 1e-12, 10.0),
        ("train.epochs", train.epochs, 1e-6, None),
        ("train.max_steps", train.max_steps, 1, None),
        ("train.batch_size", train.batch_size, 1, None),
        ("train.grad_accum", train.grad_accum, 1, None),
        ("train.max_seq_len", train.max_seq_len, 8, None),
        ("train.seed", train.seed, 0, None),
        ("train.eval_every", train.eval_every, 1, None),
        ("train.checkpoint_every", train.checkpoint_every, 1, None),
        ("train.warmup_steps", train.warmup_steps, 0, None),
    ]
    problems = []
    for name, value, low, high in checks:
        if value is None and name == "train.max_steps":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name}: must be a number (got {value!r})")
        elif value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            problems.append(f"{name}: must be {bounds} (got {value})")
    return problems


def _weight_module_names(directory: Path) -> tuple[str, ...]:
    """Names of the modules holding a 2-D `weight` in the safetensors files (read from
    their JSON headers, no torch): the candidates for LoRA in an unknown architecture."""
    names: set[str] = set()
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for tensor, meta in header.items():
            parts = tensor.split(".")
            if len(parts) >= 2 and parts[-1] == "weight" and len(meta.get("shape", ())) == 2:
                names.add(parts[-2])
    return tuple(sorted(names))


# --- rows --------------------------------------------------------------------------------


@dataclass
class Example:
    """One tokenized row: `input_ids`, and `labels` (-100 on the prompt)."""

    row: int  # 1-based line of the rows file
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trainable(self) -> int:
        """Tokens the loss sees: every label but the first position's (nothing predicts
        it)."""
        return sum(1 for label in self.labels[1:] if label != -100)


def read_examples(
    rows_path: Path, tokenizer: Any, max_seq_len: int
) -> tuple[list[Example], list[Example]]:
    """The (train, eval) examples of a JSONL rows file. TrainingError(bad_data) names the
    first row that cannot be trained on."""
    train_rows: list[Example] = []
    eval_rows: list[Example] = []
    with open(rows_path, encoding="utf-8") as source:
        for line_number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            example, split = _example(line_number, line, tokenizer, max_seq_len)
            (eval_rows if split == "eval" else train_rows).append(example)
    if not train_rows:
        raise TrainingError(f"{rows_path.name} has no rows in the train split", kind="bad_data")
    return train_rows, eval_rows


def _bad(row: int, message: str) -> TrainingError:
    return TrainingError(f"row {row}: {message}", kind="bad_data")


def _example(row: int, line: str, tokenizer: Any, max_seq_len: int) -> tuple[Example, str]:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise _bad(row, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _bad(row, "not a JSON object")
    split = data.get("split", "train")
    if split not in ("train", "eval"):
        raise _bad(row, f"split must be 'train' or 'eval' (got {split!r})")
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise _bad(row, "messages must be a list of {role, content} strings")
    elif "prompt" in data and "completion" in data:
        if not isinstance(data["prompt"], str) or not isinstance(data["completion"], str):
            raise _bad(row, "prompt and completion must be strings")
        messages = [
            {"role": "user", "content": data["prompt"]},
            {"role": "assistant", "content": data["completion"]},
        ]
    elif "variables" in data:
        raise _bad(row, "variables rows must be rendered into chat rows before training")
    else:
        raise _bad(row, "expected messages, or prompt and completion")
    if not messages or messages[-1]["role"] != "assistant":
        last = messages[-1]["role"] if messages else "nobody"
        raise _bad(row, f"the last message is from {last}, not the assistant: nothing to train on")
    if not any(m["role"] != "assistant" for m in messages[:-1]):
        raise _bad(row, "the assistant's answer needs a message before it")
    prompt_text = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise _bad(row, "the chat template does not render the answer after the prompt")
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    if not answer:
        raise _bad(row, "no trainable token: the answer is empty")
    if len(answer) + 1 > max_seq_len:
        raise _bad(
            row,
            f"no trainable token left: the answer alone is {len(answer)} tokens, which leaves "
            f"no room for the prompt in max_seq_len {max_seq_len}; raise max_seq_len or "
            "shorten the answer",
        )
    room = max_seq_len - len(answer)
    truncated = len(prompt) > room
    prompt = prompt[-room:]
    example = Example(row, prompt + answer, [-100] * len(prompt) + answer, truncated)
    return example, split


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, window_batches: int = LENGTH_WINDOW_BATCHES
) -> list[list[int]]:
    """Indexes into `lengths` in batches of `batch_size` rows of similar length: a seeded
    shuffle, windows of `window_batches` batches sorted by length (longest first), the
    batches shuffled. The same arguments give the same batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = window_batches * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _epoch_batches(examples: list[Example], batch_size: int, seed: int, epoch: int):
    return length_grouped_batches(
        [len(e.input_ids) for e in examples], batch_size, seed * 1_000_003 + epoch
    )


# --- training ----------------------------------------------------------------------------


@dataclass
class _State:
    """What a checkpoint stores besides tensors."""

    run: str  # fingerprint of base model, rows and settings
    step: int = 0
    micro: int = 0  # micro-batches done since the start
    epoch: int = 0
    epoch_batches: list[list[int]] = field(default_factory=list)
    ema: float = 0.0
    ema_count: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    eval_loss: float | None = None
    tokens: int = 0  # non-padding tokens trained on
    seconds: float = 0.0


@dataclass(frozen=True)
class RunSpec:
    """One training run as its processes need it (JSON-safe, no torch): what `train()`
    resolved and checked before the loop starts, so that each of a multi-device run's
    processes starts from the same facts without hashing the base model again."""

    base_model: str
    directory: str  # the model's safetensors directory
    base_model_sha256: str
    rows_path: str
    work_dir: str
    run: str  # fingerprint of base model, rows and settings
    lora: dict
    train: dict

    @property
    def lora_settings(self) -> LoraSettings:
        modules = self.lora.get("target_modules")
        return LoraSettings(**{**self.lora, "target_modules": tuple(modules) if modules else None})

    @property
    def train_settings(self) -> TrainSettings:
        return TrainSettings(**self.train)


def train(
    *,
    base_model: str,
    rows_path: Path,
    lora: LoraSettings,
    train: TrainSettings,
    work_dir: Path,
    on_progress: Callable[[Progress], None],
    should_cancel: Callable[[], bool],
    log: Callable[[str], None] = print,
    base_model_sha256: str = "",
    devices: int = 1,
) -> TrainResult:
    """Train a LoRA adapter of `base_model` on the rows at `rows_path`; see the module
    docstring. `on_progress` is called after every optimizer step; `should_cancel` before
    every micro-batch (TrainingError(cancelled) when it says so). Resumes from
    `work_dir`'s newest checkpoint; returns the stored result if `work_dir` holds a
    finished adapter of the same run.

    `devices` above 1: the run is launched with accelerate on that many processes (one
    per GPU, or per CPU "device"; `workers.runtime.distributed.launch`), each global
    batch split between them, so the result is a one-process run's up to float rounding.
    A killed process ends the launch: TrainingError(process_lost); the checkpoints stay,
    and the next call resumes from them."""
    work_dir = Path(work_dir)
    rows_path = Path(rows_path)
    work_dir.mkdir(parents=True, exist_ok=True)
    directory = _converted_model(base_model, base_model_sha256)
    problems = check_settings(base_model=base_model, lora=lora, train=train)
    if problems:
        raise TrainingError("; ".join(problems), kind="invalid_settings")
    run = _fingerprint(base_model, rows_path, lora, train, base_model_sha256)
    finished = _finished(work_dir, run)
    if finished is not None:
        log(f"adapter already trained in {finished.adapter_dir}")
        return finished
    spec = RunSpec(
        base_model=base_model,
        directory=str(directory),
        base_model_sha256=base_model_sha256 or _registration_sha256(base_model, directory),
        rows_path=str(rows_path),
        work_dir=str(work_dir),
        run=run,
        lora={**asdict(lora), "target_modules": list(lora.target_modules or ()) or None},
        train=asdict(train),
    )
    if devices > 1:
        from workers.runtime.distributed import launch

        return launch(
            spec, devices=devices, on_progress=on_progress, should_cancel=should_cancel, log=log
        )
    return run_training(spec, on_progress=on_progress, should_cancel=should_cancel, log=log)


def run_training(
    spec: RunSpec,
    *,
    on_progress: Callable[[Progress], None],
    should_cancel: Callable[[], bool],
    log: Callable[[str], None],
) -> TrainResult:
    """The training loop of `spec` in this process: the only one, or one of the processes
    `accelerate launch` started (its environment says which; `Accelerator` reads it).

    accelerate's `Accelerator` sets up the process group (gloo on CPU, nccl on CUDA) and
    wraps the loss module for data parallelism (DDP, or FSDP when launched so); with one
    process it wraps nothing. Every process reads every row and walks the same batches;
    each takes its share of every micro-batch (rows rank, rank + N, ...; a process whose
    share is empty runs the batch's first row with weight 0, so that all take part in
    every gradient reduction). Each scales its summed loss by N / the step's answer
    tokens, so the averaged gradient is exactly the one-process gradient. accelerate's
    DataLoader sharding is not used: it gives each process its own batch (N times the
    global batch) or pads an uneven batch with repeated rows, and either would change
    the result against one process. Only the main process reports progress, writes
    checkpoints and the adapter; each process keeps its own RNG state in them."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from workers.runtime.local import load_directory

    lora, train = spec.lora_settings, spec.train_settings
    directory, work_dir = Path(spec.directory), Path(spec.work_dir)
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if not main:
        log = _quiet
    if train.qlora:
        model, tokenizer = _load_quantized(directory)
    else:
        loaded = load_directory(directory, precision="fp32")  # LoRA trains on fp32 weights
        model, tokenizer = loaded.model, loaded.tokenizer
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    train_rows, eval_rows = read_examples(Path(spec.rows_path), tokenizer, train.max_seq_len)
    truncated = sum(e.truncated for e in train_rows + eval_rows)
    log(
        f"{len(train_rows)} train / {len(eval_rows)} eval rows"
        + (
            f", {truncated} with the prompt cut to max_seq_len {train.max_seq_len}"
            if truncated
            else ""
        )
        + (f"; {world} processes ({accelerator.distributed_type.value})" if world > 1 else "")
    )

    config = json.loads((directory / "config.json").read_text())
    targets = lora.target_modules or default_target_modules(config["model_type"])
    torch.manual_seed(train.seed)  # the same LoRA initialisation in every process
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, peft_config)
    except ValueError as exc:
        raise TrainingError(f"lora.target_modules: {exc}", kind="invalid_settings") from exc
    peft_model.peft_config["default"].base_model_name_or_path = spec.base_model
    if world > 1:
        torch.manual_seed(train.seed * 1_000_003 + rank)  # each process its own dropout
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=0.0)

    batches_per_epoch = math.ceil(len(train_rows) / train.batch_size)
    total_steps = train.max_steps or max(
        1, math.ceil(train.epochs * batches_per_epoch / train.grad_accum)
    )
    checkpoints = work_dir / "checkpoints"
    latest = _latest_checkpoint(checkpoints) if main else None
    latest = _broadcast(accelerator, latest)
    if latest is not None:  # the adapter weights before wrapping, the rest after
        _restore_weights(latest, peft_model, spec.run)
    loss_module = _loss_module(peft_model, torch)
    # The model is on its device already (load_directory: this process's GPU, or the
    # CPU); the scheduler is not prepared, since accelerate would step it once per
    # process and the learning rate must follow the one-process schedule.
    loss_module, optimizer = accelerator.prepare(
        loss_module, optimizer, device_placement=[False, False]
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, train.warmup_steps, total_steps)
    state = _State(run=spec.run)
    resumed_from = 0
    if latest is not None:
        state = _restore(latest, accelerator, optimizer, scheduler, spec.run)
        resumed_from = state.step
        log(f"resuming from checkpoint {latest.name} (step {state.step} of {total_steps})")
    else:
        state.epoch_batches = _epoch_batches(train_rows, train.batch_size, train.seed, 0)

    device = peft_model.get_base_model().device
    pad_id = tokenizer.pad_token_id

    def share(batch: list[Example]) -> tuple[list[Example], float]:
        """This process's rows of a global batch, and their weight (0: a stand-in)."""
        mine = batch[rank::world]
        return (mine, 1.0) if mine else (batch[:1], 0.0)

    def loss_sum(batch: list[Example]):
        ids, mask, labels = _collate(batch, pad_id, device, torch)
        return loss_module(ids, mask, labels)

    def next_batch() -> list[Example]:
        position = state.micro - state.epoch * batches_per_epoch
        if position >= len(state.epoch_batches):
            state.epoch += 1
            state.epoch_batches = _epoch_batches(
                train_rows, train.batch_size, train.seed, state.epoch
            )
            position = 0
        state.micro += 1
        return [train_rows[i] for i in state.epoch_batches[position]]

    def evaluate() -> float | None:
        if not eval_rows:
            return None
        loss_module.eval()
        order = sorted(eval_rows, key=lambda e: len(e.input_ids))
        total = torch.zeros((), dtype=torch.float64, device=device)
        with torch.no_grad():
            for start in range(0, len(order), train.batch_size):
                rows, weight = share(order[start : start + train.batch_size])
                with _out_of_memory_as_error(rows, device, "evaluating"):
                    total += float(loss_sum(rows)) * weight
        loss_module.train()
        count = sum(e.trainable for e in eval_rows)
        total = float(accelerator.reduce(total, "sum")) if world > 1 else float(total)
        return total / count if count else None

    loss_module.train()
    run_start = time.perf_counter()
    run_tokens = 0
    seconds_before = state.seconds
    while state.step < total_steps:
        micro_batches = [next_batch() for _ in range(train.grad_accum)]
        step_tokens = sum(e.trainable for batch in micro_batches for e in batch)
        learning_rate = scheduler.get_last_lr()[0]
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for index, batch in enumerate(micro_batches):
            if should_cancel():
                raise TrainingError(f"cancelled at step {state.step + 1}", kind="cancelled")
            rows, weight = share(batch)
            # Gradients are reduced between processes once per step, on its last
            # micro-batch.
            last = index == len(micro_batches) - 1
            sync = nullcontext() if last else accelerator.no_sync(loss_module)
            with sync, _out_of_memory_as_error(rows, device, f"at step {state.step + 1}"):
                loss = loss_sum(rows) * weight
                if step_tokens:
                    accelerator.backward(loss * (world / step_tokens))
            step_loss += loss.detach().double()
            run_tokens += sum(len(e.input_ids) for e in batch)
        # all the module's parameters (the frozen ones have no gradient): under FSDP
        # accelerate then clips by the norm over every process's shard
        accelerator.clip_grad_norm_(loss_module.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if world > 1:
            step_loss = accelerator.reduce(step_loss, "sum")
        loss = float(step_loss) / step_tokens if step_tokens else 0.0
        state.last_loss = loss
        if state.first_loss is None:
            state.first_loss = loss
        state.ema = SMOOTHING * state.ema + (1 - SMOOTHING) * loss
        state.ema_count += 1
        if state.step % train.eval_every == 0 or state.step == total_steps:
            state.eval_loss = evaluate()
            if state.eval_loss is not None:
                log(f"step {state.step}: eval loss {state.eval_loss:.4f}")
        elapsed = time.perf_counter() - run_start
        state.seconds = seconds_before + elapsed
        state.tokens += sum(len(e.input_ids) for batch in micro_batches for e in batch)
        if state.step % train.checkpoint_every == 0 and state.step < total_steps:
            _save_checkpoint(
                checkpoints, accelerator, loss_module, peft_model, optimizer, scheduler, state
            )
            log(f"checkpoint step-{state.step}")
        done_here = state.step - resumed_from
        if main:
            on_progress(
                Progress(
                    step=state.step,
                    total_steps=total_steps,
                    epoch=state.micro / batches_per_epoch,
                    loss=loss,
                    smoothed_loss=state.ema / (1 - SMOOTHING**state.ema_count),
                    eval_loss=state.eval_loss,
                    tokens_per_second=run_tokens / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=(total_steps - state.step) * elapsed / done_here,
                    learning_rate=learning_rate,
                )
            )

    metrics = {
        "train_loss": state.ema / (1 - SMOOTHING**state.ema_count),
        "first_loss": state.first_loss,
        "last_loss": state.last_loss,
        "eval_loss": state.eval_loss,
        "steps": state.step,
        "epochs": state.micro / batches_per_epoch,
        "tokens": state.tokens,
        "seconds": round(state.seconds, 3),
        "resumed_from_step": resumed_from,
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "trainable_parameters": sum(p.numel() for p in params),
        "devices": world,
    }
    weights = _adapter_state(accelerator, loss_module)
    result = None
    if main:
        result = _save_adapter(
            work_dir,
            peft_model,
            spec.base_model,
            spec.base_model_sha256,
            lora,
            targets,
            metrics,
            spec.run,
            weights,
        )
        shutil.rmtree(checkpoints, ignore_errors=True)
        log(f"adapter saved: {result.adapter_dir} ({result.size_bytes} bytes)")
    accelerator.wait_for_everyone()
    return result if result is not None else _finished(work_dir, spec.run)


def _quiet(line: str) -> None:
    """The log of a process other than the main one: its lines repeat the main's."""


def _broadcast(accelerator: Any, value: Any) -> Any:
    """The main process's `value` in every process (a picklable object)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _loss_module(peft_model: Any, torch: Any) -> Any:
    """`peft_model` with `_loss_function` as its forward, (ids, mask, labels) -> summed
    answer-token loss: the module accelerate wraps (DDP's gradient hooks and FSDP's
    gathering need the forward to run through the wrapper)."""
    loss_of = _loss_function(peft_model, torch)

    class LossModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.peft_model = peft_model

        def forward(self, ids, mask, labels):
            return loss_of(ids, mask, labels)[0]

    return LossModule()


def _is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _adapter_state(accelerator: Any, loss_module: Any) -> dict | None:
    """Under FSDP, the whole model's state dict gathered on the main process (every
    process must call this); None otherwise (the main process's peft model holds the
    weights, the same in every process)."""
    if not _is_fsdp(accelerator):
        return None
    full = accelerator.get_state_dict(loss_module)
    return {k.removeprefix("peft_model."): v for k, v in full.items()}


def _load_quantized(directory: Path) -> tuple[Any, Any]:
    """QLoRA: the base model in 4-bit NF4 (bitsandbytes) with bf16 compute, prepared for
    k-bit training. Only on a CUDA GPU: TrainingError("QLoRA needs a CUDA GPU") elsewhere.
    This branch runs only on a GPU machine (see docs/architecture.md)."""
    import torch

    if not torch.cuda.is_available():
        raise TrainingError("QLoRA needs a CUDA GPU", kind="invalid_settings")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        quantization_config=quantization,
        device_map={"": torch.cuda.current_device()},  # this process's GPU (set by accelerate)
        dtype=torch.bfloat16,
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), tokenizer


def _converted_model(base_model: str, manifest_sha256: str = "") -> Path:
    """The model's safetensors directory, its files checked against its registration
    (ModelFilesChanged, a BackendError, passes through: the apps audit it); the default
    model is converted on first use."""
    from workers.runtime.local import load_local_model
    from workers.runtime.registry import ModelFilesChanged, resolve

    try:
        directory = resolve(base_model, manifest_sha256)
    except ModelFilesChanged:
        raise
    except BackendError as exc:
        raise TrainingError(str(exc), kind="invalid_settings") from exc
    if not (directory / "config.json").exists():
        if base_model != DEFAULT_MODEL_ID:
            raise TrainingError(
                f"base model {base_model!r} is not available: {directory} does not exist",
                kind="invalid_settings",
            )
        try:
            load_local_model(base_model, manifest_sha256)
        except ModelFilesChanged:
            raise
        except BackendError as exc:
            raise TrainingError(str(exc), kind="invalid_settings") from exc
    return directory


LOSS_CHUNK = 256  # answer positions per slice of the output head


def _loss_function(peft_model: Any, torch: Any):
    """(input_ids, attention_mask, labels) -> (summed token loss, token count).

    Runs the decoder, then the output head only at positions whose next token has a
    label: on answer-only training most positions are prompt or padding, and the head
    (hidden size x vocabulary) is a large share of a small model's compute. With a frozen,
    bias-free head (LoRA's case) the head and the cross-entropy are fused and chunked
    (`head_cross_entropy`): the vocabulary-wide logits exist for LOSS_CHUNK positions at
    a time, never for the whole batch. Models whose logits are post-processed
    (soft-capping, scaling) use the full forward."""
    import torch.nn.functional as F

    inner = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    config = inner.config
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    head = inner.get_output_embeddings()
    direct = (
        decoder is not None
        and head is not None
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logits_scaling", None) in (None, 1, 1.0)
    )
    fused = (
        direct
        and isinstance(head, torch.nn.Linear)
        and head.bias is None
        and not head.weight.requires_grad
    )

    def loss_of(ids, mask, labels):
        targets = labels[:, 1:]
        keep = targets != -100
        if direct:
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False)[0]
            if fused:
                return head_cross_entropy(hidden[:, :-1][keep], head.weight, targets[keep])
            logits = head(hidden[:, :-1][keep])
        else:
            logits = inner(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][keep]
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss, int(keep.sum())

    return loss_of


def head_cross_entropy(hidden: Any, weight: Any, targets: Any, chunk: int = LOSS_CHUNK):
    """(summed cross-entropy of `hidden @ weight.T` against `targets`, len(targets)) for a
    frozen output head, LOSS_CHUNK rows at a time.

    The gradient with respect to `hidden` is computed in the same pass (softmax minus the
    one-hot target, times the head), so neither the logits nor their softmax are kept for
    the backward pass: peak memory for the head is one chunk's logits instead of three
    copies of (answer tokens x vocabulary), and each chunk's logits are read and written
    a few times fewer. Equal to `F.cross_entropy(hidden @ weight.T, targets, "sum")` and
    its gradient up to float rounding (tests/workers/test_training.py)."""
    import torch

    loss = _HeadCrossEntropy.apply(hidden, weight, targets, chunk, torch.is_grad_enabled())
    return loss, int(targets.numel())


def _head_cross_entropy_class():
    import torch

    class HeadCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk, with_grad):  # type: ignore[override]
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden) if with_grad and hidden.requires_grad else None
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk]
                t = targets[start : start + chunk]
                logits = (h @ weight.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if grad is not None:
                    probs = logits.sub_(lse[:, None]).exp_()
                    probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                    grad[start : start + chunk] = probs.to(weight.dtype) @ weight
            ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
            ctx.with_grad = grad is not None
            return total

        @staticmethod
        def backward(ctx, grad_output):  # type: ignore[override]
            (grad,) = ctx.saved_tensors
            grad_hidden = grad * grad_output.to(grad.dtype) if ctx.with_grad else None
            return grad_hidden, None, None, None, None

    return HeadCrossEntropy


class _LazyFunction:
    """The autograd Function, built on first use so that importing this module needs no
    torch."""

    _cls: Any = None

    def apply(self, *args: Any) -> Any:
        if _LazyFunction._cls is None:
            _LazyFunction._cls = _head_cross_entropy_class()
        return _LazyFunction._cls.apply(*args)


_HeadCrossEntropy = _LazyFunction()


def _collate(examples: list[Example], pad_id: int, device: Any, torch: Any):
    """(input_ids, attention_mask, labels) of a batch, right-padded to its longest row."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def _loss_sum(
    examples: list[Example],
    batch_size: int,
    loss_of: Callable,
    collate: Callable,
    device: Any,
    torch: Any,
    should_cancel: Callable[[], bool] | None = None,
) -> tuple[float, int]:
    """(summed answer-token loss, answer tokens) over `examples`, without gradients, in
    batches of rows of similar length. The caller puts the model in eval mode."""
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            if should_cancel is not None and should_cancel():
                raise TrainingError("cancelled while evaluating", kind="cancelled")
            chunk = [examples[i] for i in order[start : start + batch_size]]
            with _out_of_memory_as_error(chunk, device, "evaluating"):
                loss_sum, n = loss_of(*collate(chunk))
            total += float(loss_sum)
            count += n
    return total, count


@contextmanager
def _out_of_memory_as_error(batch: list[Example], device: Any, where: str) -> Iterator[None]:
    """Turns the device's out-of-memory error into TrainingError(out_of_memory)."""
    from workers.runtime.engine import is_out_of_memory

    try:
        yield
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        longest = max(len(e.input_ids) for e in batch)
        raise TrainingError(
            f"out of memory on {device} {where} with a batch of {len(batch)} rows of up to "
            f"{longest} tokens; lower batch_size (raise grad_accum to keep the effective "
            "batch) or max_seq_len",
            kind="out_of_memory",
        ) from exc


# --- checkpoints and the adapter ---------------------------------------------------------


def _fingerprint(
    base_model: str,
    rows_path: Path,
    lora: LoraSettings,
    train: TrainSettings,
    base_model_sha256: str = "",
):
    rows_sha = hashlib.sha256(rows_path.read_bytes()).hexdigest()
    payload = {
        "base_model": base_model,
        "rows": rows_sha,
        "lora": asdict(lora),
        "train": asdict(train),
    }
    if base_model_sha256:
        payload["base_model_sha256"] = base_model_sha256
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def _latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint; leftovers of an interrupted write are removed."""
    if not checkpoints.is_dir():
        return None
    complete = []
    for path in checkpoints.iterdir():
        if path.name.startswith("."):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith("step-") and (path / "state.json").exists():
            complete.append((int(path.name.removeprefix("step-")), path))
    return max(complete)[1] if complete else None


def _rank_file(name: str, rank: int, suffix: str) -> str:
    """`rng.pt` for the main process (the one-process name), `rng-1.pt` for process 1."""
    return f"{name}{suffix}" if rank == 0 else f"{name}-{rank}{suffix}"


def _save_checkpoint(
    checkpoints: Path, accelerator, loss_module, peft_model, optimizer, scheduler, state: _State
) -> None:
    """Every process calls this at the same step. The main process writes the adapter,
    scheduler and data position into `.step-N/`; each process its RNG state (and, under
    FSDP, its shard of the optimizer state; else the main's is every process's); then
    the main renames the directory into place and keeps the last KEEP_CHECKPOINTS."""
    import numpy as np
    import torch

    rank, main = accelerator.process_index, accelerator.is_main_process
    fsdp = _is_fsdp(accelerator)
    weights = _adapter_state(accelerator, loss_module)
    staging = checkpoints / f".step-{state.step}"
    if main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        extra = {"state_dict": weights} if weights is not None else {}
        peft_model.save_pretrained(staging / "adapter", **_SAVE, **extra)
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        (staging / "state.json").write_text(json.dumps(asdict(state)))
    accelerator.wait_for_everyone()
    if main or fsdp:
        torch.save(optimizer.state_dict(), staging / _rank_file("optimizer", rank, ".pt"))
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    torch.save(
        {"torch": torch.get_rng_state(), "cuda": cuda}, staging / _rank_file("rng", rank, ".pt")
    )
    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    (staging / _rank_file("rng", rank, ".json")).write_text(json.dumps(rng))
    accelerator.wait_for_everyone()
    if not main:
        return
    target = checkpoints / f"step-{state.step}"
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    steps = sorted(
        int(p.name.removeprefix("step-"))
        for p in checkpoints.iterdir()
        if p.name.startswith("step-")
    )
    for old in steps[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(checkpoints / f"step-{old}", ignore_errors=True)


def _restore_weights(path: Path, peft_model, run: str) -> None:
    """The checkpoint's adapter weights into `peft_model` (before accelerate wraps it);
    TrainingError(invalid_settings) for a checkpoint of another run."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state["run"] != run:
        raise TrainingError(
            f"{path.parent.parent} holds checkpoints of a run with other rows or settings; "
            "use a new work directory",
            kind="invalid_settings",
        )
    weights = load_file(path / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(peft_model, weights)


def _restore(path: Path, accelerator, optimizer, scheduler, run: str) -> _State:
    """The optimizer, scheduler and this process's RNG state from checkpoint `path`, and
    the data position. A process without its own RNG file (the run had fewer processes
    then) takes the main's."""
    import numpy as np
    import torch

    rank = accelerator.process_index
    state = _State(**json.loads((path / "state.json").read_text()))
    own = path / _rank_file("optimizer", rank, ".pt")
    if not _is_fsdp(accelerator) or not own.exists():
        own = path / "optimizer.pt"
    optimizer.load_state_dict(torch.load(own, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_pt = path / _rank_file("rng", rank, ".pt")
    rng_json = path / _rank_file("rng", rank, ".json")
    if not (rng_pt.exists() and rng_json.exists()):
        rng_pt, rng_json = path / "rng.pt", path / "rng.json"
    rng = torch.load(rng_pt, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    states = json.loads(rng_json.read_text())
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return state


def _save_adapter(
    work_dir: Path,
    peft_model,
    base_model: str,
    base_sha256: str,
    lora,
    targets,
    metrics,
    run,
    weights: dict | None = None,
) -> TrainResult:
    """The adapter (`weights`: the full model's state dict when the peft model's own
    parameters are shards, under FSDP) and its record, renamed into work_dir/adapter."""
    import peft

    staging = Path(tempfile.mkdtemp(prefix=".adapter-", dir=work_dir))
    target = work_dir / "adapter"
    try:
        extra = {"state_dict": weights} if weights is not None else {}
        peft_model.save_pretrained(staging, **_SAVE, **extra)
        (staging / "README.md").unlink(missing_ok=True)  # peft's empty model card
        record = {
            "run": run,
            "sha256": _files_sha256(staging),
            "size_bytes": sum((staging / name).stat().st_size for name in ARTIFACT_FILES),
            "base_model": base_model,
            "base_model_sha256": base_sha256,
            "lora_config": {
                "r": lora.r,
                "alpha": lora.alpha,
                "dropout": lora.dropout,
                "target_modules": list(targets),
                "bias": "none",
                "task_type": "CAUSAL_LM",
                "peft_version": peft.__version__,
            },
            "metrics": metrics,
        }
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _result(target, record)


def _finished(work_dir: Path, run: str) -> TrainResult | None:
    path = work_dir / "adapter" / RECORD_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record["run"] != run:
        raise TrainingError(
            f"{work_dir} holds an adapter trained on other rows or settings; use a new "
            "work directory",
            kind="invalid_settings",
        )
    return _result(path.parent, record)


def _result(adapter_dir: Path, record: dict) -> TrainResult:
    return TrainResult(
        adapter_dir=adapter_dir,
        **{k: v for k, v in record.items() if k != "run"},
    )


def _files_sha256(directory: Path) -> str:
    """sha256 over the adapter's config and weights: `<name> <sha256 of the file>` lines."""
    lines = [f"{name} {_sha256(directory / name)}\n" for name in ARTIFACT_FILES]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _registration_sha256(base_model: str, directory: Path) -> str:
    """The manifest hash of the model's registration on this worker; for an unregistered
    folder (tests building a model by hand), the hash of its safetensors files."""
    from workers.runtime.registry import read_record

    record = read_record(base_model)
    return record.manifest_sha256 if record else _model_sha256(directory)


_model_hashes: dict[tuple[str, int, int], str] = {}


def _model_sha256(directory: Path) -> str:
    """sha256 of the base model's weights (its safetensors files, by name), memoised per
    file size and modification time."""
    files = sorted(directory.glob("*.safetensors"))
    lines = []
    for path in files:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _model_hashes:
            _model_hashes[key] = _sha256(path)
        lines.append(f"{path.name} {_model_hashes[key]}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# --- generation with an adapter ----------------------------------------------------------

_adapter_models: dict[tuple[Path, Path, str], LocalModel] = {}
_adapter_lock = threading.Lock()
KEEP_ADAPTER_MODELS = 2


def load_adapter_model(
    base_model: str, adapter_dir: Path, base_model_sha256: str = ""
) -> LocalModel:
    """A LocalModel of `base_model` with the adapter's LoRA weights merged in, loaded from
    disk into its own copy (the shared base model of `load_local_model` is left as is).
    The last KEEP_ADAPTER_MODELS are kept per process. BackendError (not retryable) when
    the base model or the adapter is missing, or the adapter was trained on another
    base model (by name, and by registration hash when `base_model_sha256` is given);
    ModelFilesChanged when the base model's files differ from its registration."""
    from peft import PeftModel

    from workers.runtime.local import cpu_precision, load_directory, with_precision

    adapter_dir = Path(adapter_dir).resolve()
    if not (adapter_dir / "adapter_config.json").exists():
        raise BackendError(f"no adapter in {adapter_dir}")
    record_path = adapter_dir / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    trained_on = record.get("base_model", base_model)
    if trained_on != base_model:
        raise BackendError(
            f"the adapter in {adapter_dir} was trained on {trained_on!r}, not {base_model!r}"
        )
    trained_hash = record.get("base_model_sha256", "")
    if base_model_sha256 and trained_hash and trained_hash != base_model_sha256:
        raise BackendError(
            f"the adapter in {adapter_dir} was trained on registration {trained_hash[:12]} of "
            f"{base_model!r}, not on {base_model_sha256[:12]}: train it again on this base"
        )
    try:
        directory = _converted_model(base_model, base_model_sha256).resolve()
    except TrainingError as exc:
        raise BackendError(str(exc)) from exc
    key = (directory, adapter_dir, base_model_sha256)
    with _adapter_lock:
        model = _adapter_models.pop(key, None)
        if model is None:
            base = load_directory(directory, precision="fp32")
            merged = PeftModel.from_pretrained(base.model, adapter_dir).merge_and_unload()
            if merged.device.type == "cpu":  # merged in fp32, then as the base model runs
                merged = with_precision(merged, cpu_precision())
            model = LocalModel(merged, base.tokenizer)
        _adapter_models[key] = model  # newest last
        while len(_adapter_models) > KEEP_ADAPTER_MODELS:
            _adapter_models.pop(next(iter(_adapter_models)))
        return model


# --- evaluation: base model vs adapter ------------------------------------------------------


@dataclass(frozen=True)
class EvalResult:
    loss: float | None  # mean cross-entropy per answer token; None without rows to score
    perplexity: float | None  # exp(loss)
    rows: int
    tokens: int  # answer tokens scored


def perplexity(loss: float | None) -> float | None:
    """exp(loss), capped so that a diverged model still gives a finite number."""
    return None if loss is None else math.exp(min(loss, 700.0))


def read_split(rows_path: Path, tokenizer: Any, max_seq_len: int, split: str) -> list[Example]:
    """The examples of one split of a rows file, tokenized and masked exactly as train()
    does (answer-only labels, prompt cut from the left). TrainingError(bad_data) names
    the first row that cannot be scored."""
    examples: list[Example] = []
    with open(rows_path, encoding="utf-8") as source:
        for line_number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            example, row_split = _example(line_number, line, tokenizer, max_seq_len)
            if row_split == split:
                examples.append(example)
    return examples


def evaluate(
    *,
    base_model: str,
    rows_path: Path,
    adapter_dir: Path | None = None,
    max_seq_len: int = 512,
    batch_size: int = 4,
    split: str = "eval",
    should_cancel: Callable[[], bool] | None = None,
    base_model_sha256: str = "",
) -> EvalResult:
    """Loss and perplexity of `base_model` (with the adapter in `adapter_dir` merged in,
    when given) on the `split` rows of `rows_path`: the same tokenization, answer-only
    masking and loss as train()'s eval loss, so the base model and an adapter trained
    with the same max_seq_len are scored on exactly the same tokens.

    TrainingError: `invalid_settings` when the model or adapter cannot be loaded,
    `bad_data` naming a row, `out_of_memory`, `cancelled` (checked per batch)."""
    import torch

    from workers.runtime.registry import ModelFilesChanged

    if adapter_dir is None:
        from workers.runtime.local import load_local_model

        _converted_model(base_model, base_model_sha256)
        try:
            loaded = load_local_model(base_model, base_model_sha256)
        except ModelFilesChanged:
            raise
        except BackendError as exc:
            raise TrainingError(str(exc), kind="invalid_settings") from exc
    else:
        try:
            loaded = load_adapter_model(base_model, Path(adapter_dir), base_model_sha256)
        except ModelFilesChanged:
            raise
        except BackendError as exc:
            raise TrainingError(str(exc), kind="invalid_settings") from exc
    examples = read_split(Path(rows_path), loaded.tokenizer, max_seq_len, split)
    if not examples:
        return EvalResult(loss=None, perplexity=None, rows=0, tokens=0)
    model = loaded.model
    model.eval()
    device = model.device
    pad_id = loaded.tokenizer.pad_token_id
    total, count = _loss_sum(
        examples,
        batch_size,
        _loss_function(model, torch),
        lambda chunk: _collate(chunk, pad_id, device, torch),
        device,
        torch,
        should_cancel,
    )
    loss = total / count if count else None
    return EvalResult(loss=loss, perplexity=perplexity(loss), rows=len(examples), tokens=count)
