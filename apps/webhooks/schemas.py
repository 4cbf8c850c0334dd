from datetime import datetime
from typing import Any
from uuid import UUID

from ninja import Field, Schema


class WebhookOut(Schema):
    id: int
    url: str
    description: str
    events: list[str]
    enabled: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    secret_rotated_at: datetime | None


class WebhookCreateIn(Schema):
    url: str
    events: list[str] = Field(description="Events to receive, e.g. ['version.created']")
    description: str = ""
    enabled: bool = True


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="The signing secret: shown now, never again")


class WebhookUpdateIn(Schema):
    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None


class WebhookSecretOut(Schema):
    id: int
    secret: str = Field(description="The new signing secret: shown now, never again")
    secret_rotated_at: datetime


class AttemptOut(Schema):
    number: int
    started_at: datetime
    status_code: int | None
    error: str
    duration_ms: int
    response_excerpt: str


class DeliveryOut(Schema):
    id: int
    event: str
    event_id: UUID = Field(description="The webhook-id header, the same on every attempt")
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str
    response_excerpt: str
    duration_ms: int | None
    created_at: datetime
    delivered_at: datetime | None
    redelivery_of: int | None = Field(None, alias="redelivery_of_id")
    payload: dict[str, Any]
    attempt_log: list[AttemptOut]
