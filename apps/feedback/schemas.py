"""ninja schemas of apps.feedback. The feedback signal arrives as plain JSON values: the
service checks them and names the field (thumbs, score, scale, edited_text)."""

from datetime import date, datetime
from typing import Any

from ninja import Field, Schema


class FeedbackIn(Schema):
    thumbs: Any = Field(None, description="1 (up) or -1 (down)")
    score: Any = Field(None, description="A number on `scale`")
    scale: Any = Field(None, description="[lowest, highest] of the score, default [0, 1]")
    edited_text: Any = Field(None, description="The user's corrected output")
    comment: Any = ""
    external_user_id: Any = Field("", description="Your end user's id (≤ 200 characters)")


class FeedbackOut(Schema):
    id: int
    generation: int
    prompt: str
    version: int
    kind: str
    thumbs: int | None
    score: float | None
    score_raw: float | None
    scale: list[float] | None
    edit_distance: int | None
    edit_similarity: float | None
    value: float
    comment: str
    external_user_id: str
    created_by: str | None
    created_at: datetime


class AlertOut(Schema):
    id: int
    prompt: str
    version: int
    metric: str
    baseline: float
    current: float
    drop: float
    baseline_samples: int
    window_samples: int
    rule: dict[str, Any]
    raised_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    note: str


class AcknowledgeIn(Schema):
    note: Any = ""


class AlertRuleIn(Schema):
    threshold: Any = 0.15
    window: Any = 100
    baseline_size: Any = 100
    min_samples: Any = 50
    enabled: Any = True


class AlertRuleOut(Schema):
    threshold: float
    window: int
    baseline_size: int
    min_samples: int
    enabled: bool


class VersionSeriesOut(Schema):
    version: int
    summary: dict[str, float | None]
    counts: dict[str, int]
    series: dict[str, list[float | None]]


class FeedbackDashboardOut(Schema):
    prompt: str
    range_days: int
    days: list[date]
    latency_sampled: bool
    versions: list[VersionSeriesOut]
