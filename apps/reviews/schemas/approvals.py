from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema

Verdict = Literal["approve", "request_changes", "reject"]


class ApprovalPolicyIn(Schema):
    """The whole policy (PUT replaces it). Requests already open keep the policy they were
    opened under."""

    required_approvals: dict[str, int] = Field(
        ..., description='Distinct approvers needed per role, e.g. {"sme": 1, "compliance": 1}'
    )
    protected_labels: list[str] = Field(
        ..., description="Labels that may only point at an approved version"
    )
    changes_block: bool = Field(
        True, description="A 'request changes' decision blocks until a new version is reviewed"
    )
    threads_block: bool = Field(
        False,
        description="Open comment threads on a version keep its request from being approved",
    )
    min_eval_pass_rate: float | None = Field(None, ge=0, le=1)


class ApprovalPolicyOut(Schema):
    version: int
    required_approvals: dict[str, int]
    protected_labels: list[str]
    changes_block: bool
    threads_block: bool
    min_eval_pass_rate: float | None
    updated_at: datetime
    updated_by: str | None


class ReviewRequestOpenIn(Schema):
    note: str = Field("", max_length=5000)
    reviewers: list[str] = Field(
        default_factory=list,
        description="Usernames asked by name (else every holder of a role "
        "the policy requires is told)",
    )


class ReviewRequestOut(Schema):
    id: int
    prompt: str
    version: int
    state: str
    missing: list[str]
    note: str
    opened_by: str | None
    reviewers: list[str]
    policy_version: int
    superseded_by: int | None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class DecisionOut(Schema):
    reviewer: str
    verdict: Verdict
    comment: str
    roles: list[str]
    created_at: datetime


class LabelDiffOut(Schema):
    label: str
    version: int | None = Field(..., description="The version the label points at now")
    compared_with: int | None = Field(
        None,
        description="The version the diff starts from: the label's version, or, once the "
        "label points at the reviewed version, the one it pointed at before",
    )
    diff: dict[str, Any] | None = Field(
        ...,
        description="From compared_with to the reviewed version: same_version (the label "
        "points at the reviewed version), messages_changed, config_changed, "
        "schema_changes, breaking",
    )


class ReviewRequestDetailOut(ReviewRequestOut):
    policy: dict[str, Any] = Field(..., description="The policy the request was opened under")
    decisions: list[DecisionOut] = Field(..., description="Current decisions")
    counted: dict[str, str] = Field(..., description="Approver -> the role their approval fills")
    history: list[DecisionOut] = Field(..., description="Every decision, oldest first")
    label_diffs: list[LabelDiffOut]


class ReviewRequestListQuery(Schema):
    state: str | None = None
    prompt: str | None = None


class DecisionIn(Schema):
    verdict: Verdict
    comment: str = Field("", max_length=5000)


class InboxItemOut(Schema):
    id: int
    squad: str
    prompt: str
    version: int
    state: str
    missing: list[str]
    opened_by: str | None
    created_at: datetime
    reason: Literal["named", "role"]


class InboxOut(Schema):
    total: int
    counts: dict[str, int] = Field(..., description="Squad slug -> requests waiting")
    items: list[InboxItemOut]


class CommentIn(Schema):
    body: str = Field(..., max_length=5000)
    message_index: int | None = Field(None, description="0-based message the comment is about")
    line: int | None = Field(None, description="1-based line in that message")
    parent: int | None = Field(None, description="Reply to this comment's thread")
    review_request: int | None = None


class ReplyOut(Schema):
    id: int
    author: str | None
    body: str
    created_at: datetime


class CommentOut(ReplyOut):
    message_index: int | None
    line: int | None
    review_request: int | None
    resolved: bool
    resolved_by: str | None
    resolved_at: datetime | None
    replies: list[ReplyOut]


class ResolveIn(Schema):
    resolved: bool = True


class NotificationQuery(Schema):
    unread: bool = False


class NotificationOut(Schema):
    id: int
    squad: str | None
    kind: str
    text: str
    url: str
    created_at: datetime
    read: bool


class NotificationListOut(Schema):
    unread: int
    items: list[NotificationOut]


class NotificationsReadIn(Schema):
    ids: list[int] | None = Field(None, description="Which to mark read; all when omitted")


class NotificationsReadOut(Schema):
    marked: int
