"""The fine-tune pre-flight: what a job will do before it is queued, and the settings it
cannot run with.

`finetune_plan` (the start form's live panel and its "Check" button) and
`check_runnable` (called by `jobs.finetune_job_create`, the one path every job takes —
UI, API, admin) read the dataset version's rows once and count each row's prompt and
answer tokens with `tokens.token_counter` (the model's tokenizer when the web node has
it, else ceil(characters / 4)), plus the chat template's markers (an estimate of
TEMPLATE_TOKENS per message). From them:

- steps and epochs the way the runtime computes them (`workers.runtime.training.train`:
  ceil(train rows / batch_size) micro-batches per epoch, grad_accum of them per step,
  max_steps winning over epochs);
- the estimated time: the tokens trained (each row cut to max_seq_len, times the
  epochs) plus the eval passes (forward only, counted at a third of a trained token)
  over the machine's speed — the median tokens/s of the last SPEED_SAMPLE finished jobs
  on the same base model, which every job stores (`FineTuneJob.tokens_per_second`), or
  DEFAULT_TOKENS_PER_SECOND when none has finished yet (docs/benchmarks.md: SmolLM2-135M
  LoRA on one CPU thread trains ~140 tokens/s).

Refused (ValidationFailed naming the field): a max_seq_len that leaves a row's answer
no room for its prompt (the runtime would fail the job with `bad_data`), and an
explicit eval_every on a version without eval rows. Warned: prompts cut by max_seq_len,
no eval rows, more than MAX_SENSIBLE_EPOCHS passes over the data.
"""

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache

from apps.basemodels import memory
from apps.basemodels.memory import MemoryPlan
from apps.basemodels.models import BaseModelVersion
from apps.core.exceptions import ValidationFailed
from apps.finetune import jobs
from apps.finetune.models import DatasetVersion, FineTuneJob
from apps.finetune.tokens import APPROXIMATE, TokenCounter, token_counter
from apps.generation.models import ModelTarget
from apps.generation.targets import target_resolve
from apps.squads.access import require_squad_permission
from apps.squads.permissions import RUN_FINETUNE

DEFAULT_TOKENS_PER_SECOND = 140.0
SPEED_SAMPLE = 5
MAX_SENSIBLE_EPOCHS = 20
# <|im_start|>role\n ... <|im_end|>\n: the chat template's tokens around a message.
TEMPLATE_TOKENS = 5
EVAL_COST = 1 / 3


@dataclass(frozen=True)
class RowTokens:
    row: int  # 1-based line of the version's file
    split: str
    prompt: int
    answer: int

    @property
    def total(self) -> int:
        return self.prompt + self.answer


@dataclass
class Plan:
    train_rows: int
    eval_rows: int
    batches_per_epoch: int
    total_steps: int
    epochs: float
    tokens_trained: int
    tokens_per_second: float
    speed_source: str
    seconds: float
    counter: str
    max_seq_len: int
    longest_row: int
    longest_answer: int
    truncated_rows: int
    warnings: list[dict[str, str]] = field(default_factory=list)
    # apps.basemodels.memory.MemoryPlan.as_dict() of the job on each of its devices
    memory: dict[str, Any] | None = None
    devices: int = 1

    @property
    def approximate_counts(self) -> bool:
        return self.counter == APPROXIMATE


CACHE_SECONDS = 24 * 3600


def row_tokens(version: DatasetVersion, base_model: str) -> list[RowTokens]:
    """Each row's prompt and answer tokens as the runtime will see them (variables rows
    rendered with their prompt version, like the worker's training rows). A version is
    immutable, so the counts are cached by its sha256, its prompt version and the
    counter: the start form's panel reads the file once, not on every change."""
    counter = token_counter(base_model)
    key = f"finetune:row-tokens:{version.sha256}:{version.dataset.prompt_version_id}:{counter.name}"
    cached = cache.get(key)
    if cached is not None:
        return [RowTokens(*row) for row in cached]
    rows = _count_rows(version, counter)
    cache.set(key, [(r.row, r.split, r.prompt, r.answer) for r in rows], CACHE_SECONDS)
    return rows


def _count_rows(version: DatasetVersion, counter: TokenCounter) -> list[RowTokens]:
    dataset = version.dataset
    out = []
    with open(version.path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            kept = jobs.training_row(dataset, row)
            if "messages" in kept:
                messages = kept["messages"]
                prompt = sum(
                    counter.count(str(m.get("content", ""))) + TEMPLATE_TOKENS
                    for m in messages[:-1]
                )
                answer = counter.count(str(messages[-1].get("content", ""))) + 2
            else:
                prompt = counter.count(kept["prompt"]) + 2 * TEMPLATE_TOKENS
                answer = counter.count(kept["completion"]) + 2
            out.append(RowTokens(number, row.get("split", "train"), prompt, answer))
    return out


def measured_speed(base_model: str) -> tuple[float, str]:
    """(tokens/s, where the number comes from) for training `base_model` here."""
    speeds = list(
        FineTuneJob.objects.filter(
            base_model=base_model,
            status=FineTuneJob.Status.SUCCEEDED,
            tokens_per_second__gt=0,
        )
        .order_by("-finished_at", "-pk")
        .values_list("tokens_per_second", flat=True)[:SPEED_SAMPLE]
    )
    if not speeds:
        return (
            DEFAULT_TOKENS_PER_SECOND,
            f"default ({DEFAULT_TOKENS_PER_SECOND:g} tokens/s): no job on {base_model} "
            "has finished here yet",
        )
    jobs_text = f"{len(speeds)} finished job{'s' if len(speeds) != 1 else ''}"
    return statistics.median(speeds), f"measured: median of the last {jobs_text} on {base_model}"


def _refusals(
    rows: list[RowTokens], version: DatasetVersion, train: dict[str, Any], asked: dict[str, Any]
) -> None:
    max_seq_len = train["max_seq_len"]
    where = f"Dataset '{version.dataset.slug}' v{version.number}"
    no_room = [r for r in rows if r.answer + 1 > max_seq_len]
    if no_room:
        worst = max(no_room, key=lambda r: r.answer)
        need = max(r.answer for r in rows) + 1
        suggest = max(need, max(r.total for r in rows))
        raise ValidationFailed(
            f"train.max_seq_len {max_seq_len} is too short for {where}: "
            f"{len(no_room)} of {len(rows)} row{'s' if len(rows) != 1 else ''} have an "
            f"answer that alone fills it (row {worst.row}: about {worst.answer} tokens), "
            "leaving no room for the prompt, so training would fail on them. Use at least "
            f"{need}; {suggest} keeps every row whole.",
            field="train.max_seq_len",
            extra={"rows": [r.row for r in no_room[:20]], "at_least": need},
        )
    if asked.get("eval_every") is not None and version.eval_count == 0:
        raise ValidationFailed(
            f"train.eval_every asks for an evaluation every {train['eval_every']} steps, but "
            f"{where} has no eval rows. Make a version with an eval split (eval fraction "
            "above 0), or leave eval_every empty.",
            field="train.eval_every",
        )


MAX_DEVICES = 64


def worker_devices() -> tuple[str, int, str]:
    """(device kind, devices one job may use on a worker, the setting that says so): the
    GPUs of a CUDA worker (STUDIO_WORKER_DEVICES), or the training processes a CPU worker
    may start, a CPU "device" being one process (STUDIO_TRAIN_MAX_CPU_PROCESSES)."""
    if settings.STUDIO_WORKER_DEVICE == "cuda":
        return "cuda", settings.STUDIO_WORKER_DEVICES, "STUDIO_WORKER_DEVICES"
    return "cpu", settings.STUDIO_TRAIN_MAX_CPU_PROCESSES, "STUDIO_TRAIN_MAX_CPU_PROCESSES"


def clean_devices(devices: Any) -> int:
    """The devices a job asks for: 1 when not given; ValidationFailed on `devices` for a
    number out of range or more than the workers have."""
    if devices is None:
        return 1
    from apps.core.validation import clean_number

    devices = clean_number(devices, field="devices", kind=int, low=1, high=MAX_DEVICES)
    kind, available, setting = worker_devices()
    if devices > available:
        what = (
            f"{available} GPU{'s' if available != 1 else ''} a job may use"
            if kind == "cuda"
            else f"{available} training process{'es' if available != 1 else ''} a job may "
            'start (on a CPU worker a "device" is one process)'
        )
        raise ValidationFailed(
            f"This job asks for {devices} devices; the {kind} workers here have {what} "
            f"({setting}). Ask for at most {available}.",
            field="devices",
        )
    return devices


def worker_budget() -> tuple[str, int]:
    """(device, bytes) the pre-flight plans a job against: STUDIO_WORKER_DEVICE and
    STUDIO_WORKER_MEMORY_MB (else STUDIO_WORKER_MEMORY_DEFAULT_MB)."""
    megabytes = settings.STUDIO_WORKER_MEMORY_MB or settings.STUDIO_WORKER_MEMORY_DEFAULT_MB
    return settings.STUDIO_WORKER_DEVICE, megabytes * 1024 * 1024


def memory_plan(
    *, base: BaseModelVersion, lora: dict[str, Any], train: dict[str, Any], devices: int = 1
) -> MemoryPlan | None:
    """The memory the job needs on each of its devices (None when the registry does not
    know the model's shape). With several devices each process holds its share of every
    batch; under FSDP (STUDIO_TRAIN_STRATEGY, CUDA workers) also its share of the base
    weights, else a whole copy (DDP)."""
    from workers.runtime.training import default_target_modules

    if not (base.parameters and base.hidden_size and base.num_layers and base.vocab_size):
        return None
    device, budget = worker_budget()
    modules = lora.get("target_modules")
    if not modules:
        try:
            modules = default_target_modules(base.model_type)
        except ValueError:
            modules = ("q_proj", "k_proj", "v_proj", "o_proj")
    sharded = devices > 1 and settings.STUDIO_TRAIN_STRATEGY == "fsdp" and device == "cuda"
    return memory.estimate(
        memory.ModelShape(
            parameters=math.ceil(base.parameters / devices) if sharded else base.parameters,
            hidden_size=base.hidden_size,
            num_layers=base.num_layers,
            vocab_size=base.vocab_size,
            model_type=base.model_type,
        ),
        device=device,
        budget_bytes=budget,
        r=lora.get("r") or 8,
        target_modules=max(len(modules), 1),
        batch_size=math.ceil(train["batch_size"] / devices),
        max_seq_len=train["max_seq_len"],
        gradient_checkpointing=bool(train.get("gradient_checkpointing")),
        qlora=bool(train.get("qlora")),
    )


def check_memory(
    *, base: BaseModelVersion, lora: dict[str, Any], train: dict[str, Any], devices: int = 1
) -> MemoryPlan | None:
    """Refuse QLoRA on a CPU worker, and a job whose memory estimate per device exceeds
    the worker's budget, naming the setting that would make it fit."""
    device, _ = worker_budget()
    if train.get("qlora") and device != "cuda":
        raise ValidationFailed(
            "QLoRA needs a CUDA GPU; the workers here run on the CPU. Turn train.qlora off.",
            field="train.qlora",
        )
    plan = memory_plan(base=base, lora=lora, train=train, devices=devices)
    if plan is not None and not plan.fits:
        first = plan.advice[0]
        each = f" per device ({devices} devices)" if devices > 1 else ""
        raise ValidationFailed(
            f"Fine-tuning '{base.model.name}' needs about {plan.total_bytes / memory.MIB:,.0f} "
            f"MiB{each} on the {device} worker, which has "
            f"{plan.budget_bytes / memory.MIB:,.0f} MiB: "
            f"it cannot fit. To make it fit, {first['message']}.",
            field=first["field"],
            extra={"memory": plan.as_dict()},
        )
    return plan


def check_runnable(
    *, dataset_version: DatasetVersion, base_model: str, train: dict[str, Any], asked: dict
) -> list[RowTokens]:
    """Refuse settings the job cannot run with (see the module docstring); `train` is the
    cleaned settings, `asked` what the caller gave. Returns the rows' token counts."""
    rows = row_tokens(dataset_version, base_model)
    _refusals(rows, dataset_version, train, asked)
    return rows


def plan_for(
    *,
    dataset_version: DatasetVersion,
    base_model: str,
    train: dict[str, Any],
    asked: dict[str, Any],
) -> Plan:
    """Steps, epochs and time of a job with these cleaned settings, with warnings;
    ValidationFailed for settings it cannot run with."""
    rows = check_runnable(
        dataset_version=dataset_version, base_model=base_model, train=train, asked=asked
    )
    max_seq_len = train["max_seq_len"]
    train_rows = [r for r in rows if r.split != "eval"]
    eval_rows = [r for r in rows if r.split == "eval"]
    batches = max(math.ceil(len(train_rows) / train["batch_size"]), 1)
    total_steps = train["max_steps"] or max(
        1, math.ceil(train["epochs"] * batches / train["grad_accum"])
    )
    epochs = total_steps * train["grad_accum"] / batches
    per_epoch = sum(min(r.total, max_seq_len) for r in train_rows)
    per_eval = sum(min(r.total, max_seq_len) for r in eval_rows)
    evals = math.ceil(total_steps / train["eval_every"]) if eval_rows else 0
    tokens = round(epochs * per_epoch)
    speed, source = measured_speed(base_model)
    seconds = (tokens + evals * per_eval * EVAL_COST) / speed
    truncated = sum(1 for r in rows if r.total > max_seq_len)
    warnings = []
    if truncated:
        warnings.append(
            {
                "field": "train.max_seq_len",
                "message": f"{truncated} of {len(rows)} rows are longer than max_seq_len "
                f"{max_seq_len}: their prompts lose tokens from the start.",
            }
        )
    if not eval_rows:
        warnings.append(
            {
                "field": "dataset_version",
                "message": f"Dataset '{dataset_version.dataset.slug}' v{dataset_version.number} "
                "has no eval rows: the job reports no eval loss, and the adapter cannot be "
                "compared with the base model on held-out rows.",
            }
        )
    if epochs > MAX_SENSIBLE_EPOCHS:
        knob = "train.max_steps" if train["max_steps"] else "train.epochs"
        warnings.append(
            {
                "field": knob,
                "message": f"{total_steps:,} steps on {len(train_rows)} train "
                f"row{'s' if len(train_rows) != 1 else ''} is {epochs:,.0f} epochs: the adapter "
                "will learn these rows by heart. Lower "
                f"{'max steps' if train['max_steps'] else 'epochs'} or add rows.",
            }
        )
    return Plan(
        train_rows=len(train_rows),
        eval_rows=len(eval_rows),
        batches_per_epoch=batches,
        total_steps=total_steps,
        epochs=epochs,
        tokens_trained=tokens,
        tokens_per_second=speed,
        speed_source=source,
        seconds=seconds,
        counter=token_counter(base_model).name,
        max_seq_len=max_seq_len,
        longest_row=max((r.total for r in rows), default=0),
        longest_answer=max((r.answer for r in rows), default=0),
        truncated_rows=truncated,
        warnings=warnings,
    )


def finetune_plan(
    *,
    actor: AbstractBaseUser,
    dataset_version: DatasetVersion,
    target_name: str | None = None,
    base_model: str | None = None,
    lora: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    devices: int | None = None,
) -> Plan:
    """The pre-flight of the job `finetune_job_create` would queue with these arguments:
    the same permission and checks, nothing written. A job that cannot fit the worker's
    memory is refused here as there (ValidationFailed naming the setting to change)."""
    squad = dataset_version.dataset.squad
    require_squad_permission(actor, squad, RUN_FINETUNE)
    target = target_resolve(squad_id=squad.pk, name=target_name or jobs.DEFAULT_TARGET)
    if target.kind != ModelTarget.Kind.LOCAL:
        raise ValidationFailed(
            f"Target '{target.name}' is remote; fine-tuning trains a local target's base model.",
            field="target",
        )
    base = jobs.job_base_model(target, base_model)
    devices_clean = clean_devices(devices)
    lora_clean, train_clean = jobs.clean_settings(
        lora or {}, train or {}, context_length=jobs.job_context(target, base)
    )
    if dataset_version.train_count == 0:
        raise ValidationFailed(
            f"Dataset '{dataset_version.dataset.slug}' v{dataset_version.number} has no train "
            "rows.",
            field="dataset_version",
        )
    plan = plan_for(
        dataset_version=dataset_version,
        base_model=base.model.name,
        train=train_clean,
        asked=train or {},
    )
    estimate = check_memory(base=base, lora=lora_clean, train=train_clean, devices=devices_clean)
    plan.memory = estimate.as_dict() if estimate is not None else None
    plan.devices = devices_clean
    return plan
