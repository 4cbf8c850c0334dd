"""Reads of datasets and their versions: 404 for missing and forbidden alike. Row reads
stream the version's JSONL file (a page never loads the whole file)."""

import itertools
import json
import tarfile
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from apps.core.exceptions import NotFound, ValidationFailed
from apps.finetune.jobs import LOG_TAIL_BYTES
from apps.finetune.models import Adapter, AdapterComparison, Dataset, DatasetVersion, FineTuneJob
from apps.finetune.rows import content_hash
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_SQUAD

User = AbstractBaseUser | AnonymousUser
MAX_PAGE = 200
DIFF_SHOWN = 50


def dataset_list_for_user(*, user: User, squad: Squad) -> QuerySet[Dataset]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    return Dataset.objects.filter(squad=squad).select_related(
        "squad", "latest_version", "created_by", "prompt_version__template"
    )


def dataset_get_for_user(*, user: User, squad: Squad, slug: str) -> Dataset:
    dataset = dataset_list_for_user(user=user, squad=squad).filter(slug=slug).first()
    if dataset is None:
        raise NotFound(f"Dataset '{slug}' not found in squad '{squad.slug}'.")
    return dataset


def dataset_version_list(*, user: User, dataset: Dataset) -> QuerySet[DatasetVersion]:
    require_squad_permission(user, dataset.squad, VIEW_SQUAD)
    return (
        DatasetVersion.objects.filter(dataset=dataset)
        .select_related("parent", "created_by")
        .order_by("-number")
    )


def dataset_version_get(*, user: User, dataset: Dataset, number: int) -> DatasetVersion:
    version = dataset_version_list(user=user, dataset=dataset).filter(number=number).first()
    if version is None:
        raise NotFound(f"Dataset '{dataset.slug}' has no version {number}.", field="version")
    version.dataset = dataset
    return version


@dataclass(frozen=True)
class RowPage:
    rows: list[dict[str, Any]]
    offset: int
    limit: int
    total: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.rows)
        return end if end < self.total else None

    @property
    def previous_offset(self) -> int | None:
        return max(self.offset - self.limit, 0) if self.offset > 0 else None


def dataset_rows_page(
    *, user: User, version: DatasetVersion, offset: int = 0, limit: int = 20
) -> RowPage:
    """Rows offset..offset+limit of the version's file, read line by line."""
    require_squad_permission(user, version.dataset.squad, VIEW_SQUAD)
    if offset < 0:
        raise ValidationFailed("offset must not be negative.", field="offset")
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationFailed(f"limit must be 1 to {MAX_PAGE}.", field="limit")
    with open(version.path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in itertools.islice(handle, offset, offset + limit)]
    return RowPage(rows=rows, offset=offset, limit=limit, total=version.row_count)


@dataclass(frozen=True)
class VersionDiff:
    old: DatasetVersion
    new: DatasetVersion
    added_count: int
    removed_count: int
    unchanged_count: int
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]


def _hash_counts(version: DatasetVersion) -> Counter[str]:
    """How often each row content hash occurs in the version (the rows are not kept)."""
    with open(version.path, encoding="utf-8") as handle:
        return Counter(content_hash(json.loads(line)) for line in handle)


def _rows_with(version: DatasetVersion, keys: set[str], limit: int) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = []
    if not keys:
        return shown
    with open(version.path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            row = json.loads(line)
            if content_hash(row) in keys:
                shown.append({"index": index, "row": row})
                if len(shown) >= limit:
                    break
    return shown


def dataset_version_diff(
    *, user: User, old: DatasetVersion, new: DatasetVersion, shown: int = DIFF_SHOWN
) -> VersionDiff:
    """Rows added and removed between two versions, by content hash (the row without its
    meta and split, so a row that only moved between train and eval is unchanged); the
    first `shown` of each with their index in their file."""
    require_squad_permission(user, new.dataset.squad, VIEW_SQUAD)
    before, after = _hash_counts(old), _hash_counts(new)
    added, removed = after - before, before - after
    return VersionDiff(
        old=old,
        new=new,
        added_count=added.total(),
        removed_count=removed.total(),
        unchanged_count=new.row_count - added.total(),
        added=_rows_with(new, set(added), shown),
        removed=_rows_with(old, set(removed), shown),
    )


# --- fine-tune jobs and adapters ------------------------------------------------------------


def finetune_job_list_for_user(*, user: User, squad: Squad) -> QuerySet[FineTuneJob]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    return FineTuneJob.objects.filter(squad=squad).select_related(
        "squad", "dataset_version__dataset", "target", "created_by", "adapter"
    )


def finetune_job_get_for_user(*, user: User, squad: Squad, job_id: int) -> FineTuneJob:
    job = finetune_job_list_for_user(user=user, squad=squad).filter(pk=job_id).first()
    if job is None:
        raise NotFound(f"Fine-tune job {job_id} not found in squad '{squad.slug}'.")
    return job


def finetune_job_log(*, user: User, job: FineTuneJob, tail_bytes: int = LOG_TAIL_BYTES) -> str:
    """The end of the job's training log (the last `tail_bytes`, from a line start)."""
    require_squad_permission(user, job.squad, VIEW_SQUAD)
    path = Path(job.work_dir) / "train.log" if job.work_dir else None
    if path is None or not path.exists():
        return ""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(size - tail_bytes, 0))
        data = handle.read()
    text = data.decode("utf-8", errors="replace")
    return text.split("\n", 1)[-1] if size > tail_bytes else text


def adapter_list_for_user(*, user: User, squad: Squad) -> QuerySet[Adapter]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    return Adapter.objects.filter(squad=squad).select_related(
        "squad", "job__created_by", "dataset_version__dataset", "approved_by"
    )


def adapter_get_for_user(*, user: User, squad: Squad, adapter_id: int) -> Adapter:
    adapter = adapter_list_for_user(user=user, squad=squad).filter(pk=adapter_id).first()
    if adapter is None:
        raise NotFound(f"Adapter {adapter_id} not found in squad '{squad.slug}'.")
    return adapter


ARCHIVE_FORMATS = ("tar.gz", "zip")


def adapter_archive(*, user: User, adapter: Adapter, fmt: str) -> IO[bytes]:
    """The adapter's directory as a .tar.gz or .zip (a temporary file, at offset 0), in the
    layout PEFT and TGI's LORA_ADAPTERS read: adapter_config.json + adapter weights at the
    archive's top level under `adapter-<id>/`."""
    require_squad_permission(user, adapter.squad, VIEW_SQUAD)
    if fmt not in ARCHIVE_FORMATS:
        raise ValidationFailed(
            f"Unknown archive format '{fmt}'; use {' or '.join(ARCHIVE_FORMATS)}.", field="format"
        )
    root = Path(adapter.path)
    if not root.is_dir():
        raise NotFound(f"The files of adapter {adapter.pk} are missing on this server.")
    name = f"adapter-{adapter.pk}"
    out = tempfile.TemporaryFile()  # noqa: SIM115 — handed to the response, which closes it
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if fmt == "zip":
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, f"{name}/{path.relative_to(root)}")
    else:
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            for path in files:
                archive.add(path, f"{name}/{path.relative_to(root)}")
    out.seek(0)
    return out


# --- adapter comparisons --------------------------------------------------------------------


def adapter_comparison_list_for_user(
    *, user: User, adapter: Adapter
) -> QuerySet[AdapterComparison]:
    require_squad_permission(user, adapter.squad, VIEW_SQUAD)
    return AdapterComparison.objects.filter(adapter=adapter).select_related("created_by")


def adapter_comparison_get_for_user(
    *, user: User, adapter: Adapter, comparison_id: int
) -> AdapterComparison:
    comparison = (
        adapter_comparison_list_for_user(user=user, adapter=adapter)
        .filter(pk=comparison_id)
        .first()
    )
    if comparison is None:
        raise NotFound(f"Comparison {comparison_id} of adapter {adapter.pk} not found.")
    comparison.adapter = adapter
    return comparison
