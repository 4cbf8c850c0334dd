"""Reads of datasets and their versions: 404 for missing and forbidden alike. Row reads
stream the version's JSONL file (a page never loads the whole file)."""

import itertools
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from apps.core.exceptions import NotFound, ValidationFailed
from apps.finetune.models import Dataset, DatasetVersion
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
