"""ninja schemas of output review queues. Rubrics, scores and external items arrive as
plain JSON: the services check them and name each problem (`rubric[1].max`,
`scores.accuracy`, `items[3].output`)."""

from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema


class QueueCreateIn(Schema):
    name: str = Field(..., max_length=100)
    instructions: str = ""
    rubric: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Scores, e.g. {"name": "accuracy", "kind": "numeric", "min": 1, "max": 5, '
        '"required": true}, {"name": "tone", "kind": "categorical", "options": ["formal", '
        '"casual"]}, {"name": "cites_source", "kind": "boolean"}',
    )
    overlap: int = Field(1, description="Distinct reviewers per item (1–10)")
    annotator_roles: list[str] = Field(..., description="Roles that may annotate (not viewer)")


class QueueUpdateIn(Schema):
    name: str | None = Field(None, max_length=100)
    instructions: str | None = None
    rubric: list[dict[str, Any]] | None = None
    overlap: int | None = None
    annotator_roles: list[str] | None = None
    archived: bool | None = None


class QueueOut(Schema):
    slug: str
    name: str
    instructions: str
    rubric: list[dict[str, Any]]
    overlap: int
    annotator_roles: list[str]
    items: int
    annotations: int
    created_by: str | None
    created_at: datetime
    archived_at: datetime | None


class ItemsAddIn(Schema):
    generations: list[int] | None = Field(
        None, max_length=10_000, description="Ids of finished generations of this squad"
    )
    items: list[dict[str, Any]] | None = Field(
        None,
        max_length=10_000,
        description='Outputs from outside: {"inputs": {...}, "output": "...", '
        '"prompt_version": {"prompt": "<slug>", "version": 2}, "model_name": "..."}',
    )


class ItemsFromBatchIn(Schema):
    batch: int
    mode: Literal["all", "random", "percent"] = "all"
    n: int | None = Field(None, description="random: how many rows")
    percent: float | None = Field(None, description="percent: share of the rows, 0–100")
    seed: int | None = Field(None, description="Sampling seed (drawn and returned when absent)")


class ItemsAddedOut(Schema):
    created: int
    skipped: int
    ids: list[int]
    seed: int | None


class PromptRefOut(Schema):
    id: int
    template: str
    number: int
    hash: str


class AnnotationOut(Schema):
    id: int
    item: int
    reviewer: str
    verdict: str
    scores: dict[str, Any]
    edited_output: str
    edit_distance: int | None
    comment: str
    seconds_spent: int
    created_at: datetime
    updated_at: datetime


class AdjudicationOut(Schema):
    verdict: str
    output: str
    by: str | None
    at: datetime
    note: str


class ItemSummaryOut(Schema):
    id: int
    source: str
    generation: int | None
    prompt: PromptRefOut | None
    model_name: str
    claims: int
    is_full: bool
    annotation_count: int
    approvals: int
    disagreement: bool
    adjudicated: AdjudicationOut | None
    created_at: datetime


class ItemOut(ItemSummaryOut):
    inputs: dict[str, Any]
    output: str
    annotations: list[AnnotationOut] = Field(
        description="All annotations for adjudicators and queue managers; otherwise your own"
    )


class ItemPageOut(Schema):
    items: list[ItemSummaryOut]
    next_after: int | None = Field(description="Pass as ?after= for the next page")


class ItemsQuery(Schema):
    after: int = 0
    limit: int = 50
    state: Literal["all", "open", "disagreement"] = "all"


class AnnotationIn(Schema):
    verdict: str = Field(..., description="approve or reject")
    scores: dict[str, Any] = Field(default_factory=dict)
    edited_output: str | None = Field(None, description="The corrected output; null: no edit")
    comment: str = ""
    seconds_spent: int = Field(0, description="Added to the time already spent on the item")


class AdjudicationIn(Schema):
    verdict: str = Field(..., description="approve or reject")
    output: str | None = Field(None, description="The output that counts; null: the original")
    note: str = ""


class ReviewerOut(Schema):
    username: str
    annotated: int
    approved: int
    approval_rate: float | None
    edited: int
    seconds: int
    mean_seconds: float | None


class DistributionOut(Schema):
    value: Any
    count: int


class ScoreDistributionOut(Schema):
    name: str
    label: str
    kind: str
    distribution: list[DistributionOut]


class AgreementOut(Schema):
    name: str
    label: str
    level: Literal["nominal", "interval"]
    alpha: float | None = Field(description="Krippendorff's alpha; null when undefined")
    percent: float | None
    units: int = Field(description="Items with at least two values")


class EditsOut(Schema):
    count: int
    mean_distance: float | None


class DisagreementItemOut(Schema):
    id: int
    annotation_count: int
    approvals: int
    created_at: datetime
    preview: str


class QueueDashboardOut(Schema):
    queue: str
    overlap: int
    items: int
    items_complete: int
    items_unreviewed: int
    annotations: int
    annotations_target: int
    progress: float | None
    approval_rate: float | None
    verdicts: dict[str, int]
    edits: EditsOut
    reviewers: list[ReviewerOut]
    scores: list[ScoreDistributionOut]
    agreement: list[AgreementOut]
    items_multi: int
    disagreements: int
    adjudicated: int
    disagreement_items: list[DisagreementItemOut]


class ExportOut(Schema):
    id: int
    queue: str
    created_by: str | None
    created_at: datetime
    row_count: int
    sha256: str
    download_url: str
