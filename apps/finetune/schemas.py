from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema

from apps.finetune.services import DEFAULT_EVAL_FRACTION, DEFAULT_SEED


class DatasetCreateIn(Schema):
    slug: str = Field(..., max_length=100)
    name: str = Field(..., max_length=200)
    format: Literal["chat", "prompt_completion", "variables"]
    description: str = Field("", max_length=2000)
    prompt: str | None = Field(None, description="Variables datasets: the prompt's slug")
    prompt_version: int | None = Field(None, description="Variables datasets: its number")


class DatasetVersionOut(Schema):
    number: int
    parent: int | None
    source: str
    source_ref: dict[str, Any]
    sha256: str
    row_count: int
    train_count: int
    eval_count: int
    split_seed: int
    eval_fraction: float
    token_stats: dict[str, Any]
    commit_message: str
    created_by: str | None
    created_at: datetime
    download_url: str


class DatasetOut(Schema):
    slug: str
    name: str
    description: str
    format: str
    prompt: str | None
    prompt_version: int | None
    latest_version: int | None
    created_by: str | None
    created_at: datetime


class SplitForm(Schema):
    commit_message: str = Field("", max_length=500)
    seed: int | None = Field(None, description=f"Split seed (default {DEFAULT_SEED})")
    eval_fraction: float | None = Field(
        None, description=f"Share held out for evaluation (default {DEFAULT_EVAL_FRACTION})"
    )
    target: str | None = Field(None, description="Local model target (default 'local')")


class FromReviewExportIn(SplitForm):
    queue: str = Field(..., description="The review queue's slug")
    export: int = Field(..., description="The export's id")


class FromBatchJobIn(SplitForm):
    batch_job: int


class RowsPageOut(Schema):
    offset: int
    limit: int
    total: int
    next_offset: int | None
    rows: list[dict[str, Any]]


class DiffRowOut(Schema):
    index: int
    row: dict[str, Any]


class DiffOut(Schema):
    from_version: int
    to_version: int
    from_rows: int
    to_rows: int
    added_count: int
    removed_count: int
    unchanged_count: int
    added: list[DiffRowOut]
    removed: list[DiffRowOut]
