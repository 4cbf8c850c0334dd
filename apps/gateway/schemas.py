from datetime import date, datetime
from decimal import Decimal

from ninja import Field, Schema


class ServiceKeyOut(Schema):
    id: int
    name: str
    key_prefix: str
    status: str
    allow_gateway: bool
    allow_prompt_fetch: bool
    targets: list[str]
    prompts: list[str]
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rotated_from: int | None


class ServiceKeyCreateIn(Schema):
    name: str
    allow_gateway: bool = True
    allow_prompt_fetch: bool = False
    targets: list[str] = Field(default_factory=list, description='Target names, or ["*"]')
    prompts: list[str] = Field(default_factory=list, description='Prompt slugs, or ["*"]')
    expires_at: datetime | None = None


class ServiceKeyCreatedOut(ServiceKeyOut):
    secret: str = Field(description="The key: shown now, never again")


class ServiceKeyRotateIn(Schema):
    overlap_seconds: int = Field(
        3600, ge=0, le=30 * 24 * 3600, description="How long the old key keeps working"
    )


class QuotaIn(Schema):
    key_id: int | None = Field(None, description="A key of the squad; empty: the whole squad")
    requests_per_minute: int | None = Field(None, ge=0, le=2**53 - 1)
    tokens_per_minute: int | None = Field(None, ge=0, le=2**53 - 1)
    budget_tokens: int | None = Field(None, ge=0, le=2**53 - 1)
    budget_cost: Decimal | None = Field(None, ge=0, lt=10**8, decimal_places=6)
    budget_period: str = Field("day", description="day or month (UTC)")


class QuotaOut(Schema):
    key_id: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    budget_tokens: int | None
    budget_cost: Decimal | None
    budget_period: str
    updated_at: datetime


class UsageRowOut(Schema):
    calls: int
    input_tokens: int | None
    output_tokens: int | None
    cost: Decimal | None


class UsageByKeyOut(UsageRowOut):
    key_id: int | None
    key_name: str | None


class UsageByPromptOut(UsageRowOut):
    prompt: str | None
    target: str | None


class UsageByDayOut(UsageRowOut):
    day: date


class GatewayUsageOut(Schema):
    squad: dict[str, int]
    by_key: list[UsageByKeyOut]
    by_prompt: list[UsageByPromptOut]
    by_day: list[UsageByDayOut]


class CacheRuleIn(Schema):
    model: str = Field(description="A target's name or 'prompt/<slug>'")
    ttl_seconds: int = Field(ge=0, le=7 * 24 * 3600, description="0 stops caching this model")


class CacheRuleOut(Schema):
    model: str
    ttl_seconds: int
    updated_at: datetime
