from datetime import datetime
from typing import Any

from ninja import Field, Schema


class GovernancePolicyOut(Schema):
    version: int | None = Field(description="null: no policy saved yet, the defaults apply")
    rules: dict[str, Any]
    note: str
    created_by: str | None
    created_at: datetime | None


class GovernancePolicyIn(Schema):
    rules: dict[str, Any]
    note: str = ""


class FindingOut(Schema):
    stage: str
    rule: str
    type: str
    where: str
    start: int
    end: int
    action: str


class PolicyTestIn(Schema):
    text: str


class PolicyTestOut(Schema):
    policy_version: int | None
    blocked: bool
    findings: list[FindingOut]
    redacted: str


class ProvenanceOut(Schema):
    generation: int
    manifest: dict[str, Any] | None
    signature: str
    key_id: str


class VerifyIn(Schema):
    manifest: dict[str, Any]
    signature: str
    key_id: str
    output: str | None = Field(None, description="The output text; checked against output_sha256")


class VerifyOut(Schema):
    valid: bool
    reasons: list[str]
