from datetime import datetime
from typing import Any

from ninja import Schema

from apps.core.schemas import QueuePositionOut


class TestCaseIn(Schema):
    __test__ = False

    name: str
    variables: dict[str, Any]
    assertions: list[Any] = []
    tags: list[str] = []


class TestCaseUpdateIn(Schema):
    __test__ = False

    name: str | None = None
    variables: dict[str, Any] | None = None
    assertions: list[Any] | None = None
    tags: list[str] | None = None


class TestCaseOut(Schema):
    __test__ = False

    id: int
    name: str
    variables: dict[str, Any]
    assertions: list[dict[str, Any]]
    tags: list[str]
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class ImportOut(Schema):
    created: int
    updated: int
    unchanged: int


class EvalRunIn(Schema):
    prompt: str | None = None
    version: int | None = None
    version_id: int | None = None
    target: str | None = None
    tags: list[str] = []
    batch_size: int = 8


class AssertionResultOut(Schema):
    type: str
    passed: bool
    detail: str
    score: float | None = None
    raw: str | None = None


class EvalResultOut(Schema):
    case: int | None
    name: str
    passed: bool
    assertions: list[AssertionResultOut]
    output: str
    generation: int | None
    generation_status: str
    latency_ms: int
    output_tokens: int


class EvalRunOut(Schema):
    id: int
    prompt: str
    version: int
    version_id: int
    target: str
    tags: list[str]
    status: str
    total: int
    done: int
    passed: int
    failed: int
    pass_rate: float | None
    error: str
    queue: QueuePositionOut | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    url: str


class EvalRunDetailOut(EvalRunOut):
    results: list[EvalResultOut]


class CompareRowOut(Schema):
    case: int | None
    name: str
    base_passed: bool | None
    head_passed: bool | None
    failing: list[AssertionResultOut]


class CompareOut(Schema):
    base: EvalRunOut
    head: EvalRunOut
    pass_rate_delta: float | None
    regressions: list[CompareRowOut]
    fixes: list[CompareRowOut]
    unchanged: list[CompareRowOut]
    only_base: list[CompareRowOut]
    only_head: list[CompareRowOut]
