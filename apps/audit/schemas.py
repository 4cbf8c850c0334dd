from datetime import datetime
from typing import Any

from ninja import Field, Schema
from pydantic import field_validator

from apps.audit.export import ExportFormat


class AuditFilterIn(Schema):
    squad: str | None = Field(None, max_length=50, description="Squad slug")
    since: datetime | None = Field(None, description="Inclusive lower bound (ISO 8601)")
    until: datetime | None = Field(None, description="Exclusive upper bound (ISO 8601)")
    actor: str | None = Field(None, max_length=150, description="Username")
    action: str | None = Field(
        None, max_length=100, description="Exact action, or a prefix ending in * (squad.*)"
    )

    @field_validator("squad", "since", "until", "actor", "action", mode="before")
    @classmethod
    def empty_is_unset(cls, value: Any) -> Any:
        """A form submitted with a field left blank sends `since=`: that filter is unset."""
        return None if isinstance(value, str) and not value.strip() else value


class AuditExportIn(AuditFilterIn):
    format: ExportFormat = ExportFormat.JSONL


class AuditEventOut(Schema):
    sequence: int
    created_at: datetime
    actor: str = Field(..., alias="actor_label")
    squad_id: int | None
    action: str
    target_type: str
    target_id: str
    data: dict[str, Any]
    ip: str | None
    prev_hash: str
    hash: str


class ChainVerificationOut(Schema):
    id: int
    status: str
    events_checked: int
    first_broken_sequence: int | None
    detail: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
