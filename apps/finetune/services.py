"""Datasets and their immutable versions: every write of apps.finetune.

A version's rows are checked in full first (apps.finetune.rows: every problem with its
line, nothing stored on failure), then written atomically as JSONL under
DATA_DIR/datasets/<squad>/<dataset>/v<n>.jsonl, then the row is saved and audited in one
transaction; if that transaction fails the file is removed again.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest

from apps.audit.services import audit_log
from apps.core.exceptions import Conflict, NotFound, ValidationFailed
from apps.core.files import write_atomically
from apps.core.validation import clean_slug
from apps.finetune import rows as rowlib
from apps.finetune.models import Dataset, DatasetFormat, DatasetVersion
from apps.finetune.tokens import token_counter, token_stats
from apps.generation.models import BatchJob, Generation, ModelTarget
from apps.generation.targets import target_resolve
from apps.prompts.contracts import render_messages
from apps.prompts.models import PromptVersion
from apps.reviews.models import ReviewExport
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_DATASETS

User = AbstractBaseUser
SLUG_MAX = 100
DEFAULT_TARGET = "local"
DEFAULT_EVAL_FRACTION = 0.1
MAX_EVAL_FRACTION = 0.5
DEFAULT_SEED = 0


@transaction.atomic
def dataset_create(
    *,
    actor: User,
    squad: Squad,
    slug: str,
    name: str,
    format: str,
    description: str = "",
    prompt_version: PromptVersion | None = None,
    request: HttpRequest | None = None,
) -> Dataset:
    """A new, empty dataset. Variables datasets name the prompt version whose input schema
    their rows follow; the other formats take none."""
    require_squad_permission(actor, squad, MANAGE_DATASETS)
    slug = clean_slug(slug, field="slug", limit=SLUG_MAX)
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValidationFailed("Name must be 1 to 200 characters.", field="name")
    description = (description or "").strip()
    if len(description) > 2000:
        raise ValidationFailed("Description is longer than 2000 characters.", field="description")
    if format not in DatasetFormat.values:
        raise ValidationFailed(
            f"Unknown format '{format}'; use one of {', '.join(DatasetFormat.values)}.",
            field="format",
        )
    if format == DatasetFormat.VARIABLES:
        if prompt_version is None:
            raise ValidationFailed(
                "A variables dataset needs the prompt version its rows belong to.",
                field="prompt_version",
            )
        if prompt_version.template.squad_id != squad.pk:
            raise NotFound("Prompt version not found in this squad.", field="prompt_version")
    elif prompt_version is not None:
        raise ValidationFailed(
            "Only variables datasets are tied to a prompt version.", field="prompt_version"
        )
    if Dataset.objects.filter(squad=squad, slug=slug).exists():
        raise Conflict(f"A dataset '{slug}' already exists in squad '{squad.slug}'.", field="slug")
    dataset = Dataset.objects.create(
        squad=squad,
        slug=slug,
        name=name,
        description=description,
        format=format,
        prompt_version=prompt_version,
        created_by=actor,
    )
    audit_log(
        actor=actor,
        action="dataset.created",
        squad=squad,
        target=dataset,
        data={
            "slug": slug,
            "format": format,
            "prompt_version": prompt_version.pk if prompt_version else None,
        },
        request=request,
    )
    return dataset


@dataclass(frozen=True)
class SplitSettings:
    seed: int = DEFAULT_SEED
    eval_fraction: float = DEFAULT_EVAL_FRACTION


def _clean_split(seed: int | None, eval_fraction: float | None) -> SplitSettings:
    seed = DEFAULT_SEED if seed is None else seed
    eval_fraction = DEFAULT_EVAL_FRACTION if eval_fraction is None else eval_fraction
    if not 0 <= seed < 2**63:
        raise ValidationFailed("seed must be 0 to 2^63 - 1.", field="seed")
    if not 0 <= eval_fraction <= MAX_EVAL_FRACTION:
        raise ValidationFailed(
            f"eval_fraction must be 0 to {MAX_EVAL_FRACTION} (got {eval_fraction}).",
            field="eval_fraction",
        )
    return SplitSettings(seed, float(eval_fraction))


def eval_indexes(hashes: list[str], split: SplitSettings) -> set[int]:
    """Which rows are held out: the round(n × eval_fraction) rows (at most n - 1) with the
    smallest sha256(seed:content hash:index) — the same rows for the same seed and content."""
    n = len(hashes)
    k = min(int(n * split.eval_fraction + 0.5), max(n - 1, 0))
    keys = sorted(
        (hashlib.sha256(f"{split.seed}:{h}:{i}".encode()).hexdigest(), i)
        for i, h in enumerate(hashes)
    )
    return {i for _, i in keys[:k]}


def _local_target(squad: Squad, target_name: str | None) -> ModelTarget:
    target = target_resolve(squad_id=squad.pk, name=target_name or DEFAULT_TARGET)
    if target.kind != ModelTarget.Kind.LOCAL:
        raise ValidationFailed(
            f"Target '{target.name}' is remote; datasets are checked against a local base "
            "model's context (the one fine-tuning trains).",
            field="target",
        )
    return target


def _check(
    dataset: Dataset,
    values: list[tuple[int, Any]],
    errors: list[dict[str, Any]],
    target: ModelTarget,
) -> tuple[rowlib.CheckedRows, dict[str, Any]]:
    counter = token_counter(target.base_model)
    context = target.context_length or 8192
    checked = rowlib.check_rows(
        values,
        errors,
        fmt=dataset.format,
        version=dataset.prompt_version,
        counter=counter,
        context_length=context,
    )
    stats = {
        **token_stats(checked.tokens),
        "counter": counter.name,
        "target": target.name,
        "base_model": target.base_model,
        "context_length": context,
    }
    return checked, stats


def _version_path(dataset: Dataset, number: int) -> Path:
    return (
        Path(settings.DATA_DIR)
        / "datasets"
        / str(dataset.squad_id)
        / str(dataset.pk)
        / f"v{number}.jsonl"
    )


def _store_version(
    *,
    actor: User,
    dataset: Dataset,
    checked: rowlib.CheckedRows,
    stats: dict[str, Any],
    split: SplitSettings,
    source: str,
    source_ref: dict[str, Any],
    commit_message: str,
    request: HttpRequest | None,
) -> DatasetVersion:
    """Number, write and record a version. Call inside a transaction, rows already checked."""
    commit_message = (commit_message or "").strip()
    if len(commit_message) > 500:
        raise ValidationFailed(
            "Commit message is longer than 500 characters.", field="commit_message"
        )
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    hashes = [rowlib.content_hash(r) for r in checked.rows]
    held_out = eval_indexes(hashes, split)
    lines = [
        json.dumps(
            {**row, "split": "eval" if i in held_out else "train"},
            ensure_ascii=False,
            sort_keys=True,
        )
        + "\n"
        for i, row in enumerate(checked.rows)
    ]
    data = "".join(lines).encode()
    sha256 = hashlib.sha256(data).hexdigest()
    parent = dataset.latest_version
    if parent is not None and parent.sha256 == sha256:
        raise Conflict(
            f"These rows and split are identical to v{parent.number} of dataset "
            f"'{dataset.slug}' (sha256 {sha256[:12]}); nothing was stored.",
            field="file",
        )
    number = (parent.number if parent else 0) + 1
    path = _version_path(dataset, number)
    write_atomically(path, data)
    try:
        version = DatasetVersion.objects.create(
            dataset=dataset,
            number=number,
            parent=parent,
            source=source,
            source_ref=source_ref,
            path=str(path),
            sha256=sha256,
            row_count=len(lines),
            train_count=len(lines) - len(held_out),
            eval_count=len(held_out),
            split_seed=split.seed,
            eval_fraction=split.eval_fraction,
            token_stats=stats,
            commit_message=commit_message,
            created_by=actor,
        )
        dataset.latest_version = version
        dataset.save(update_fields=["latest_version"])
        audit_log(
            actor=actor,
            action="dataset.version_created",
            squad=dataset.squad,
            target=version,
            data={
                "dataset": dataset.slug,
                "number": number,
                "parent": parent.number if parent else None,
                "source": source,
                "source_ref": {k: v for k, v in source_ref.items() if k != "items"},
                "rows": len(lines),
                "sha256": sha256,
                "split": {"seed": split.seed, "eval_fraction": split.eval_fraction},
            },
            request=request,
        )
    except BaseException:
        path.unlink(missing_ok=True)  # the rollback takes the row; take the file too
        raise
    return version


@transaction.atomic
def dataset_version_upload(
    *,
    actor: User,
    dataset: Dataset,
    content: bytes,
    filename: str,
    commit_message: str = "",
    seed: int | None = None,
    eval_fraction: float | None = None,
    target_name: str | None = None,
    request: HttpRequest | None = None,
) -> DatasetVersion:
    """A new version from an uploaded JSONL or CSV file. Every line is checked; any problem
    refuses the whole file (RowsRefused: the first 100 with line numbers) and stores nothing."""
    require_squad_permission(actor, dataset.squad, MANAGE_DATASETS)
    split = _clean_split(seed, eval_fraction)
    target = _local_target(dataset.squad, target_name)
    values, errors = rowlib.parse_upload(content, filename, dataset.format)
    checked, stats = _check(dataset, values, errors, target)
    return _store_version(
        actor=actor,
        dataset=dataset,
        checked=checked,
        stats=stats,
        split=split,
        source=DatasetVersion.Source.UPLOAD,
        source_ref={
            "filename": filename[:255],
            "upload_sha256": hashlib.sha256(content).hexdigest(),
        },
        commit_message=commit_message,
        request=request,
    )


def _require_sources_format(dataset: Dataset, what: str) -> None:
    if dataset.format == DatasetFormat.PROMPT_COMPLETION:
        raise ValidationFailed(
            f"Dataset '{dataset.slug}' holds prompt/completion rows; {what} give chat or "
            "variables rows — choose a chat or variables dataset.",
            field="dataset",
        )


@transaction.atomic
def dataset_version_from_review_export(
    *,
    actor: User,
    dataset: Dataset,
    export: ReviewExport,
    commit_message: str = "",
    seed: int | None = None,
    eval_fraction: float | None = None,
    target_name: str | None = None,
    request: HttpRequest | None = None,
) -> DatasetVersion:
    """A new version holding a review export's approved (and edited) rows. Each row keeps
    its lineage (queue, item, generation, annotators, adjudicator, edit) in "meta"; the
    version's source_ref names the export, queue, items and annotators."""
    require_squad_permission(actor, dataset.squad, MANAGE_DATASETS)
    if export.squad_id != dataset.squad_id:
        raise NotFound(f"Review export {export.pk} not found.", field="export")
    _require_sources_format(dataset, "review exports")
    split = _clean_split(seed, eval_fraction)
    target = _local_target(dataset.squad, target_name)
    values: list[tuple[int, Any]] = []
    errors: list[dict[str, Any]] = []
    with open(export.path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            exported = json.loads(line)
            meta = {
                "review_export": export.pk,
                **exported["lineage"],
                "prompt": exported.get("prompt"),
                "model": exported.get("model"),
            }
            if dataset.format == DatasetFormat.CHAT:
                if "messages" not in exported:
                    errors.append(
                        {
                            "line": line_no,
                            "message": f"item {exported['lineage']['item']} has no rendered "
                            "messages (its inputs do not render with a prompt version)",
                        }
                    )
                    continue
                values.append((line_no, {"messages": exported["messages"], "meta": meta}))
            else:
                prompt = exported.get("prompt") or {}
                if prompt.get("id") != dataset.prompt_version_id:
                    errors.append(
                        {
                            "line": line_no,
                            "message": f"item {exported['lineage']['item']} comes from "
                            f"another prompt version than the dataset's",
                        }
                    )
                    continue
                values.append(
                    (
                        line_no,
                        {
                            "variables": exported["inputs"],
                            "output": exported["output"],
                            "meta": meta,
                        },
                    )
                )
    checked, stats = _check(dataset, values, errors, target)
    lineage = export.lineage or {}
    return _store_version(
        actor=actor,
        dataset=dataset,
        checked=checked,
        stats=stats,
        split=split,
        source=DatasetVersion.Source.REVIEW_EXPORT,
        source_ref={
            "export": export.pk,
            "export_sha256": export.sha256,
            "queue": export.queue_id,
            "items": lineage.get("items", []),
            "annotators": lineage.get("annotators", []),
        },
        commit_message=commit_message or f"From review export {export.pk}",
        request=request,
    )


@transaction.atomic
def dataset_version_from_batch_job(
    *,
    actor: User,
    dataset: Dataset,
    job: BatchJob,
    commit_message: str = "",
    seed: int | None = None,
    eval_fraction: float | None = None,
    target_name: str | None = None,
    request: HttpRequest | None = None,
) -> DatasetVersion:
    """A new version from a finished batch job's ok generations: the rendered prompt and the
    output (chat), or the variables and the output (variables datasets of the job's prompt
    version). Each row's meta names its batch job, generation and row."""
    require_squad_permission(actor, dataset.squad, MANAGE_DATASETS)
    if job.squad_id != dataset.squad_id:
        raise NotFound(f"Batch job {job.pk} not found.", field="job")
    _require_sources_format(dataset, "batch jobs")
    if not job.finished:
        raise Conflict(f"Batch {job.pk} is {job.status}; wait until it finishes.", field="job")
    version = job.prompt_version
    if dataset.format == DatasetFormat.VARIABLES and version.pk != dataset.prompt_version_id:
        raise Conflict(
            f"Batch {job.pk} ran another prompt version than dataset '{dataset.slug}' holds.",
            field="job",
        )
    split = _clean_split(seed, eval_fraction)
    target = _local_target(dataset.squad, target_name)
    generations = job.generations.filter(status=Generation.Status.OK).order_by("row_index")
    values: list[tuple[int, Any]] = []
    for g in generations.iterator(chunk_size=500):
        meta = {"batch_job": job.pk, "generation": g.pk, "row_index": g.row_index}
        if dataset.format == DatasetFormat.CHAT:
            rendered = render_messages(version.messages, version.input_schema, g.variables)
            row = {
                "messages": [*rendered, {"role": "assistant", "content": g.output_text}],
                "meta": meta,
            }
        else:
            row = {"variables": g.variables, "output": g.output_text, "meta": meta}
        values.append(((g.row_index or 0) + 1, row))
    if not values:
        raise Conflict(f"Batch {job.pk} has no ok generations to use.", field="job")
    checked, stats = _check(dataset, values, [], target)
    return _store_version(
        actor=actor,
        dataset=dataset,
        checked=checked,
        stats=stats,
        split=split,
        source=DatasetVersion.Source.BATCH_JOB,
        source_ref={
            "batch_job": job.pk,
            "prompt_version": version.pk,
            "generations": len(values),
        },
        commit_message=commit_message or f"From batch job {job.pk}",
        request=request,
    )
