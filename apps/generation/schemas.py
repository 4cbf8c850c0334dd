from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from ninja import Field, Schema

from apps.core.http import BoundedInt
from apps.core.schemas import QueuePositionOut


class TargetCreateIn(Schema):
    name: str = Field(..., max_length=100)
    kind: Literal["local", "remote"]
    description: str = Field("", max_length=500)
    base_model: str = Field(
        "", description="local: a registered base model (GET /api/v1/base-models); default SmolLM2"
    )
    base_url: str = ""
    remote_model: str = ""
    token_env: str = Field("", description="NAME of the environment variable with the token")
    adapter_id: str = ""
    adapter: Annotated[BoundedInt, Field(strict=True)] | None = Field(
        None,
        description="local: an approved adapter's id trained on the base model; null: none",
    )
    default_params: dict[str, Any] = {}
    context_length: int | None = Field(
        None, description="Default: the base model's context (local), else 8192"
    )
    price_input_per_1k: Decimal = Decimal(0)
    price_output_per_1k: Decimal = Decimal(0)
    global_target: bool = Field(False, description="Staff: make it available to every squad")


class TargetUpdateIn(Schema):
    """Every field as it should be (missing ones take their defaults): name and kind stay."""

    description: str = Field("", max_length=500)
    base_model: str = Field("", description="local: a registered base model; default SmolLM2")
    adapter: Annotated[BoundedInt, Field(strict=True)] | None = Field(
        None,
        description="local: an approved adapter's id trained on the base model; null: none",
    )
    base_url: str = ""
    remote_model: str = ""
    token_env: str = Field("", description="NAME of the environment variable with the token")
    adapter_id: str = ""
    default_params: dict[str, Any] = {}
    context_length: int | None = Field(
        None, description="Default: the base model's context (local), else 8192"
    )
    price_input_per_1k: Decimal = Decimal(0)
    price_output_per_1k: Decimal = Decimal(0)
    enabled: bool = True


class TargetOut(Schema):
    name: str
    kind: str
    scope: str
    description: str
    base_model: str
    base_url: str
    remote_model: str
    token_env: str
    adapter_id: str
    adapter: int | None = Field(description="the attached approved adapter's id, if any")
    default_params: dict[str, Any]
    context_length: int
    price_input_per_1k: Decimal
    price_output_per_1k: Decimal
    enabled: bool


class GenerateIn(Schema):
    variables: dict[str, Any] = {}
    label: str | None = None
    version: int | None = None
    target: str | None = Field(None, description="Override the version's model target")
    wait: bool = Field(False, description="Wait for the result (small calls)")
    timeout: float = Field(30.0, gt=0, le=120)


class GenerationOut(Schema):
    id: int
    status: str
    prompt: str | None = Field(description="Empty for a gateway call that named a target")
    version: int | None
    target: str
    target_used: str
    variables: dict[str, Any]
    output_text: str
    output_json: Any
    errors: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    latency_ms: int
    cost: Decimal
    source: str
    created_at: datetime
    finished_at: datetime | None
    poll_url: str


class BatchJobOut(Schema):
    id: int
    status: str
    prompt: str
    version: int
    target: str
    rows_total: int
    rows_done: int
    batch_size: int
    output_tokens: int
    tokens_per_second: float
    eta_seconds: float | None
    cancel_requested: bool
    error: str
    queue: QueuePositionOut | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
