"""Fine-tune jobs and adapters: every write of them (apps.finetune.services holds datasets).

Web side: `finetune_job_create` validates the settings (ranges here; target modules by
name through `workers.runtime.training.check_settings`, which reads the converted
model's config.json without torch — when the web node has no converted model yet, the
worker checks again and fails the job with the same readable message), stores the job,
audits it and enqueues it (apps.core.jobs) at commit.

Worker side (`_run_finetune`, under a lease of apps.core.jobs): writes the training rows
into the job's work dir and calls `workers.runtime.training.train`, which resumes from
the work dir's last checkpoint. Each step's progress is stored through the lease (a
worker that lost it stops at its next step and writes nothing); the lease's own thread
beats while a step or the model load takes long. A killed worker leaves a stale
heartbeat: the lifecycle's recovery requeues the job, or fails it as `worker_lost`
after its max attempts. A job on several devices runs under `accelerate launch`
(workers.runtime.distributed) while this process holds the lease; one of its training
processes killed ends the launch as `process_lost`, and the job is requeued the same
way (`Lease.retry`), or fails as `process_lost` after its max attempts.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from apps.audit.services import audit_log
from apps.basemodels.models import BaseModelVersion
from apps.basemodels.selectors import DEFAULT_BASE_MODEL, base_model_ready
from apps.core import jobs, queues
from apps.core.exceptions import Conflict, NotFound, ValidationFailed
from apps.core.validation import clean_number
from apps.finetune.models import Adapter, Dataset, DatasetFormat, DatasetVersion, FineTuneJob
from apps.generation.models import ModelTarget
from apps.generation.targets import target_resolve
from apps.prompts.contracts import render_messages
from apps.squads.access import require_squad_permission
from apps.squads.permissions import APPROVE_ADAPTERS, MANAGE_TARGETS, RUN_FINETUNE

User = AbstractBaseUser
DEFAULT_TARGET = "local"
RUN_TASK = "finetune.job"
MAX_POINTS = 400
LOG_TAIL_BYTES = 64 * 1024

# (field, type, lowest, highest) — a settings value outside is refused by name.
LORA_LIMITS = {"r": (int, 1, 256), "alpha": (int, 1, 4096), "dropout": (float, 0.0, 0.9)}
TRAIN_LIMITS = {
    "learning_rate": (float, 1e-7, 1.0),
    "epochs": (float, 0.01, 100.0),
    "max_steps": (int, 1, 1_000_000),
    "batch_size": (int, 1, 256),
    "grad_accum": (int, 1, 256),
    "max_seq_len": (int, 16, 1_048_576),
    "seed": (int, 0, 2**31 - 1),
    "eval_every": (int, 1, 1_000_000),
    "checkpoint_every": (int, 1, 1_000_000),
    "warmup_steps": (int, 0, 1_000_000),
}


# --- validation -------------------------------------------------------------------------


def clean_settings(
    lora: dict[str, Any], train: dict[str, Any], *, context_length: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The LoRA and training settings with the runtime's defaults filled in, each value
    checked (unknown keys, types, ranges; max_seq_len within the target's context).
    Raises ValidationFailed naming the field as `lora.<name>` or `train.<name>`."""
    from workers.runtime.training import LoraSettings, TrainSettings

    out: dict[str, dict[str, Any]] = {}
    for section, given, cls, limits in (
        ("lora", lora, LoraSettings, LORA_LIMITS),
        ("train", train, TrainSettings, TRAIN_LIMITS),
    ):
        known = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValidationFailed(
                f"Unknown {section} setting(s): {', '.join(unknown)}; known: {', '.join(known)}.",
                field=f"{section}.{unknown[0]}",
            )
        values = {**known, **{k: v for k, v in given.items() if v is not None}}
        for name, (kind, low, high) in limits.items():
            if values.get(name) is not None:
                values[name] = clean_number(
                    values[name], field=f"{section}.{name}", kind=kind, low=low, high=high
                )
        out[section] = values
    for name in ("gradient_checkpointing", "qlora"):
        if not isinstance(out["train"][name], bool):
            raise ValidationFailed(f"train.{name} must be true or false.", field=f"train.{name}")
    modules = out["lora"]["target_modules"]
    if modules is not None:
        if (
            isinstance(modules, str)
            or not isinstance(modules, list | tuple)
            or not modules
            or not all(isinstance(m, str) and m.strip() for m in modules)
        ):
            raise ValidationFailed(
                "lora.target_modules must be a non-empty list of module names, or empty "
                "for the architecture's default.",
                field="lora.target_modules",
            )
        out["lora"]["target_modules"] = [m.strip() for m in modules]
    if out["train"]["max_seq_len"] > context_length:
        raise ValidationFailed(
            f"train.max_seq_len {out['train']['max_seq_len']} is longer than the target's "
            f"context of {context_length} tokens.",
            field="train.max_seq_len",
        )
    return out["lora"], out["train"]


def _runtime_settings(lora: dict[str, Any], train: dict[str, Any]):
    from workers.runtime.training import LoraSettings, TrainSettings

    modules = lora.get("target_modules")
    return (
        LoraSettings(**{**lora, "target_modules": tuple(modules) if modules else None}),
        TrainSettings(**train),
    )


def _model_converted(base_model: str) -> bool:
    from workers.runtime.local import model_dir

    return (model_dir(base_model) / "config.json").exists()


def settings_problems(base_model: str, lora: dict[str, Any], train: dict[str, Any]) -> list[str]:
    """What the model refuses (target modules that do not exist, by name), read from its
    converted config without torch; [] when this process has no converted model to read."""
    if not _model_converted(base_model):
        return []
    from workers.runtime.training import check_settings

    lora_settings, train_settings = _runtime_settings(lora, train)
    return check_settings(base_model=base_model, lora=lora_settings, train=train_settings)


# --- jobs: web side -----------------------------------------------------------------------


def _local_target(squad_id: int, name: str | None) -> ModelTarget:
    target = target_resolve(squad_id=squad_id, name=name or DEFAULT_TARGET)
    if target.kind != ModelTarget.Kind.LOCAL:
        raise ValidationFailed(
            f"Target '{target.name}' is remote; fine-tuning trains a local target's base model.",
            field="target",
        )
    return target


def job_base_model(target: ModelTarget, base_model: str | None) -> BaseModelVersion:
    """The registered, ready version a job trains: `base_model` when given, else the
    target's."""
    if base_model is not None and not isinstance(base_model, str):
        raise ValidationFailed("base_model must be a registered model's name.", field="base_model")
    return base_model_ready(base_model or target.base_model or DEFAULT_BASE_MODEL)


def job_context(target: ModelTarget, base: BaseModelVersion) -> int:
    """The longest sequence a job may train on: the target's context when it runs this
    base model, else the model's own."""
    if target.base_model == base.model.name:
        return target.context_length
    return base.context_length or target.context_length


def _job_dir(job: FineTuneJob) -> Path:
    return Path(settings.DATA_DIR) / "finetune" / str(job.squad_id) / str(job.pk)


@transaction.atomic
def finetune_job_create(
    *,
    actor: User,
    dataset_version: DatasetVersion,
    target_name: str | None = None,
    base_model: str | None = None,
    lora: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    devices: int | None = None,
    request: HttpRequest | None = None,
) -> FineTuneJob:
    """Validate and queue a LoRA fine-tune on a dataset version (its train rows; its eval
    rows for the eval loss) of a registered base model: `base_model`, else the local
    target's, on `devices` devices (default 1; more than the workers have is refused).
    The memory plan (apps.finetune.preflight) refuses what cannot fit one device."""
    from apps.finetune.preflight import check_memory, check_runnable, clean_devices

    dataset = dataset_version.dataset
    squad = dataset.squad
    require_squad_permission(actor, squad, RUN_FINETUNE)
    target = _local_target(squad.pk, target_name)
    base = job_base_model(target, base_model)
    devices = clean_devices(devices)
    lora_clean, train_clean = clean_settings(
        lora or {}, train or {}, context_length=job_context(target, base)
    )
    if dataset_version.train_count == 0:
        raise ValidationFailed(
            f"Dataset '{dataset.slug}' v{dataset_version.number} has no train rows.",
            field="dataset_version",
        )
    # The pre-flight's refusals (max_seq_len too short for the rows, eval asked of a
    # version without eval rows): refused here, not by the worker after queuing.
    check_runnable(
        dataset_version=dataset_version,
        base_model=base.model.name,
        train=train_clean,
        asked=train or {},
    )
    check_memory(base=base, lora=lora_clean, train=train_clean, devices=devices)
    problems = settings_problems(base.model.name, lora_clean, train_clean)
    if problems:
        raise ValidationFailed(
            f"Model '{base.model.name}' refuses these settings: {'; '.join(problems)}",
            field="lora.target_modules",
            extra=[{"message": p} for p in problems],
        )
    job = FineTuneJob.objects.create(
        squad=squad,
        dataset_version=dataset_version,
        target=target,
        base_model=base.model.name,
        lora=lora_clean,
        train=train_clean,
        devices=devices,
        created_by=actor,
    )
    job.work_dir = str(_job_dir(job))
    job.save(update_fields=["work_dir"])
    audit_log(
        actor=actor,
        action="finetune.job_created",
        squad=squad,
        target=job,
        data={
            "dataset": dataset.slug,
            "version": dataset_version.number,
            "dataset_sha256": dataset_version.sha256,
            "target": target.name,
            "base_model": base.model.name,
            "base_model_version": base.number,
            "base_model_sha256": base.manifest_sha256,
            "lora": lora_clean,
            "train": train_clean,
            "devices": devices,
        },
        request=request,
    )
    jobs.enqueue(job)
    return job


@transaction.atomic
def finetune_job_cancel(
    *, actor: User, job: FineTuneJob, request: HttpRequest | None = None
) -> FineTuneJob:
    """A queued job is cancelled at once; a running one stops at its next step."""
    require_squad_permission(actor, job.squad, RUN_FINETUNE)
    return jobs.cancel(actor=actor, job=job, request=request)


# --- jobs: worker side --------------------------------------------------------------------


def training_row(dataset: Dataset, row: dict[str, Any]) -> dict[str, Any]:
    """A version row as the runtime reads it: chat and prompt/completion rows as they are
    (meta and split dropped); variables rows rendered with their prompt version into chat
    rows, the output as the assistant's answer."""
    if dataset.format == DatasetFormat.VARIABLES:
        prompt = dataset.prompt_version
        messages = render_messages(prompt.messages, prompt.input_schema, row["variables"])
        return {"messages": [*messages, {"role": "assistant", "content": row["output"]}]}
    if dataset.format == DatasetFormat.CHAT:
        return {"messages": row["messages"]}
    return {"prompt": row["prompt"], "completion": row["completion"]}


def write_rows(version: DatasetVersion, path: Path) -> Path:
    """The version's rows as the runtime reads them (`training_row`, with their split),
    written atomically to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    dataset = version.dataset
    with open(version.path, encoding="utf-8") as source, open(tmp, "w", encoding="utf-8") as out:
        for line in source:
            row = json.loads(line)
            kept = training_row(dataset, row)
            out.write(json.dumps({**kept, "split": row.get("split", "train")}, ensure_ascii=False))
            out.write("\n")
    os.replace(tmp, path)
    return path


def write_training_rows(job: FineTuneJob) -> Path:
    return write_rows(job.dataset_version, Path(job.work_dir) / "rows.jsonl")


class _Run:
    """One worker's run of a job: stores progress through the lease and appends the log."""

    def __init__(self, lease: jobs.Lease) -> None:
        self.lease = lease
        self.job: FineTuneJob = lease.job
        self.first = True
        self.log_path = Path(self.job.work_dir) / "train.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, line: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{timezone.now():%Y-%m-%d %H:%M:%S} {line.rstrip()}\n")

    def on_progress(self, p: Any) -> None:
        job = self.job
        points = job.points
        if self.first:
            # Resumed from a checkpoint: the steps after it run again, so their points go.
            self.first = False
            points = [pt for pt in points if pt[0] < p.step]
            job.resumed_at_steps = [*job.resumed_at_steps, max(p.step - 1, 0)]
            self.log(f"run {job.attempts} starts at step {p.step}")
        point = [p.step, _round(p.loss), _round(p.smoothed_loss), _round(p.eval_loss)]
        points = [pt for pt in points if pt[0] != p.step] + [point]
        if len(points) > MAX_POINTS:
            points = points[:-1:2] + points[-1:]
        job.points = points
        fields = {
            "step": p.step,
            "total_steps": p.total_steps,
            "epoch": p.epoch,
            "loss": p.loss,
            "smoothed_loss": p.smoothed_loss,
            "tokens_per_second": p.tokens_per_second or 0.0,
            "eta_seconds": p.eta_seconds,
            "learning_rate": p.learning_rate,
            "points": points,
            "resumed_at_steps": job.resumed_at_steps,
        }
        if p.eval_loss is not None:
            fields["eval_loss"] = p.eval_loss
        self.lease.update(**fields)  # a lost lease makes should_stop() true


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 5)


def _adapter_create(job: FineTuneJob, result: Any) -> None:
    adapter = Adapter.objects.create(
        squad_id=job.squad_id,
        job=job,
        dataset_version_id=job.dataset_version_id,
        path=str(result.adapter_dir),
        sha256=result.sha256,
        size_bytes=result.size_bytes,
        base_model=result.base_model,
        base_model_sha256=result.base_model_sha256,
        lora_config=result.lora_config,
        metrics=result.metrics,
    )
    audit_log(
        actor=None,
        action="finetune.adapter_created",
        squad=job.squad,
        target=adapter,
        data={
            "job": job.pk,
            "dataset_version": job.dataset_version_id,
            "sha256": adapter.sha256,
            "size_bytes": adapter.size_bytes,
            "base_model": adapter.base_model,
            "base_model_sha256": adapter.base_model_sha256,
            "metrics": adapter.metrics,
        },
    )


def finetune_job_run(*, job_id: int) -> FineTuneJob | None:
    """Run one given job in this process (tests, management); workers run the next GPU
    job in fair-share order (apps.finetune.tasks)."""
    return jobs.run(FINETUNE.name, job_id)


def _run_finetune(lease: jobs.Lease) -> None:
    """Resumable: train() continues from the work dir's last checkpoint, so a job whose
    worker was killed goes on from there on the next run."""
    from apps.generation.pipeline import report_changed_models
    from workers.runtime import training
    from workers.runtime.registry import ModelFilesChanged

    job: FineTuneJob = lease.job
    run = _Run(lease)
    run.log(f"run {job.attempts} on {job.worker}")
    if job.cancel_requested:
        return
    try:
        rows_path = write_training_rows(job)
        problems = settings_problems(job.base_model, job.lora, job.train)
        if problems:
            message = f"Model '{job.base_model}' refuses these settings: {'; '.join(problems)}"
            run.log(message)
            lease.finish(FineTuneJob.Status.FAILED, message, failure_kind="invalid_settings")
            return
        try:
            base = base_model_ready(job.base_model)
        except ValidationFailed as exc:
            run.log(exc.message)
            lease.finish(FineTuneJob.Status.FAILED, exc.message, failure_kind="invalid_settings")
            return
        lora, train = _runtime_settings(job.lora, job.train)
        if job.devices > 1:
            from workers.runtime.distributed import devices_here

            offered_by, here = devices_here()
            if job.devices > here:
                message = (
                    f"This job asks for {job.devices} devices; {offered_by} ({job.worker}) "
                    f"has {here}."
                )
                run.log(message)
                lease.finish(FineTuneJob.Status.FAILED, message, failure_kind="invalid_settings")
                return
        result = training.train(
            base_model_sha256=base.manifest_sha256,
            base_model=job.base_model,
            rows_path=rows_path,
            lora=lora,
            train=train,
            work_dir=Path(job.work_dir),
            on_progress=run.on_progress,
            should_cancel=lease.should_stop,
            log=run.log,
            devices=job.devices,
        )
    except ModelFilesChanged as exc:
        run.log(f"stopped: {exc}")
        report_changed_models([exc])
        lease.finish(FineTuneJob.Status.FAILED, str(exc), failure_kind="model_changed")
        return
    except training.TrainingError as exc:
        run.log(f"stopped: {exc.kind}: {exc}")
        if exc.kind == "process_lost":
            # As for a killed worker: run again from the last checkpoint, or fail once
            # the job has used its attempts.
            lease.retry(str(exc), failure_kind="process_lost")
        elif exc.kind != "cancelled":
            lease.finish(FineTuneJob.Status.FAILED, str(exc), failure_kind=exc.kind)
        return  # cancelled, or the lease lost: the lifecycle records which
    except Exception as exc:
        run.log(f"failed: {type(exc).__name__}: {exc}")
        lease.finish(
            FineTuneJob.Status.FAILED, f"{type(exc).__name__}: {exc}", failure_kind="internal"
        )
        raise
    run.log(f"adapter {result.adapter_dir} sha256 {result.sha256}")
    lease.finish(FineTuneJob.Status.SUCCEEDED, write=lambda row: _adapter_create(row, result))


def _finetune_summary(job: FineTuneJob) -> dict[str, Any]:
    return {
        "dataset": job.dataset_version.dataset.slug,
        "dataset_version": job.dataset_version.number,
        "base_model": job.base_model,
        "failure_kind": job.failure_kind,
        "step": job.step,
        "total_steps": job.total_steps,
        "adapter": Adapter.objects.filter(job_id=job.pk).values_list("pk", flat=True).first(),
    }


FINETUNE = jobs.register(
    jobs.JobKind(
        name="finetune",
        label="Fine-tune job",
        model=FineTuneJob,
        task=RUN_TASK,
        queue=queues.Queue.GPU,
        audit_prefix="finetune.job",
        run=_run_finetune,
        summary=_finetune_summary,
        url=lambda job: reverse(
            "finetune_jobs:detail", kwargs={"squad": job.squad.slug, "job_id": job.pk}
        ),
        related=("squad", "created_by", "dataset_version__dataset__prompt_version"),
        lost_fields={"failure_kind": "worker_lost"},
        devices_field="devices",
    )
)


# --- adapters -----------------------------------------------------------------------------


@transaction.atomic
def adapter_approve(
    *, actor: User, adapter: Adapter, request: HttpRequest | None = None
) -> Adapter:
    """Approve an adapter for use on model targets. Whoever started its job cannot."""
    require_squad_permission(actor, adapter.squad, APPROVE_ADAPTERS)
    adapter = (
        Adapter.objects.select_for_update(of=("self",))
        .select_related("squad", "job")
        .get(pk=adapter.pk)
    )
    if adapter.approved:
        raise Conflict(f"Adapter {adapter.pk} is already approved.", field="adapter")
    if adapter.job.created_by_id == actor.pk:
        raise Conflict(
            f"You started fine-tune job {adapter.job_id}; someone else must approve "
            f"adapter {adapter.pk}.",
            field="adapter",
        )
    adapter.approved_by = actor
    adapter.approved_at = timezone.now()
    adapter.save(update_fields=["approved_by", "approved_at"])
    audit_log(
        actor=actor,
        action="finetune.adapter_approved",
        squad=adapter.squad,
        target=adapter,
        data={"sha256": adapter.sha256, "job": adapter.job_id, "base_model": adapter.base_model},
        request=request,
    )
    return adapter


def adapter_fits_base(
    adapter: Adapter, base: BaseModelVersion, *, where: str, field: str = "adapter"
) -> None:
    """ValidationFailed unless `adapter` was trained on `base` (by manifest hash, not
    name): what attaching to a target, the target form and a comparison all check.
    `where` says what runs `base` ("target 'x' runs")."""
    if adapter.base_model_sha256 != base.manifest_sha256:
        raise ValidationFailed(
            f"Adapter {adapter.pk} was trained on '{adapter.base_model}' (manifest "
            f"{adapter.base_model_sha256[:12]}); {where} '{base.model.name}' v{base.number} "
            f"(manifest {base.manifest_sha256[:12]}): an adapter only goes on the base model "
            "it was trained on.",
            field=field,
        )


@transaction.atomic
def model_target_set_adapter(
    *,
    actor: User,
    target: ModelTarget,
    adapter: Adapter | None,
    request: HttpRequest | None = None,
) -> ModelTarget:
    """Attach an approved adapter to one of the squad's own local targets of the same base
    model (or detach with None). Global targets carry no squad's adapter."""
    if target.squad is None:
        raise ValidationFailed(
            f"Target '{target.name}' is global; attach adapters to a squad's own target.",
            field="target",
        )
    require_squad_permission(actor, target.squad, MANAGE_TARGETS)
    target = ModelTarget.objects.select_for_update().get(pk=target.pk)
    if adapter is not None:
        if adapter.squad_id != target.squad_id:
            raise NotFound(f"Adapter {adapter.pk} not found.", field="adapter")
        if target.kind != ModelTarget.Kind.LOCAL:
            raise ValidationFailed(
                f"Target '{target.name}' is remote; export the adapter and name it in "
                "adapter_id on the serving side (TGI multi-LoRA).",
                field="target",
            )
        base = base_model_ready(target.base_model or DEFAULT_BASE_MODEL, field="target")
        adapter_fits_base(adapter, base, where=f"target '{target.name}' runs")
        if not adapter.approved:
            raise Conflict(f"adapter {adapter.pk} is not approved", field="adapter")
    previous = target.lora_adapter_id
    target.lora_adapter = adapter
    target.save(update_fields=["lora_adapter"])
    audit_log(
        actor=actor,
        action="generation.target_adapter_set",
        squad=target.squad,
        target=target,
        data={
            "target": target.name,
            "adapter": adapter.pk if adapter else None,
            "sha256": adapter.sha256 if adapter else None,
            "previous": previous,
        },
        request=request,
    )
    return target
