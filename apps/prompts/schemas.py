from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema


class MessageIn(Schema):
    role: Literal["system", "user", "assistant"]
    content: str


class ModelSettingsIn(Schema):
    model_config = {"extra": "forbid"}

    target: str = "local"
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = []
    seed: int | None = None


class VersionContentIn(Schema):
    messages: list[MessageIn]
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    output_schema: dict[str, Any] | None = None
    output_format: Literal["text", "json"] = "text"
    model: ModelSettingsIn = Field(default_factory=ModelSettingsIn)
    fallback_target: str = ""


class VersionCreateIn(VersionContentIn):
    commit_message: str = Field(..., max_length=500)
    parent_number: int | None = None


class TemplateCreateIn(Schema):
    slug: str = Field(..., max_length=80)
    description: str = Field("", max_length=2000)
    tags: list[str] = []
    first_version: VersionCreateIn | None = Field(
        None, description="Optionally save version 1 in the same request."
    )


class TemplateUpdateIn(Schema):
    description: str | None = Field(None, max_length=2000)
    tags: list[str] | None = None


class LabelRefOut(Schema):
    name: str
    version: int


class TemplateOut(Schema):
    slug: str
    description: str
    tags: list[str]
    created_at: datetime
    latest_version: int | None
    labels: list[LabelRefOut]


class VersionSummaryOut(Schema):
    number: int
    commit_message: str
    author: str | None
    created_at: datetime
    content_hash: str
    parent: int | None
    labels: list[str]


class VersionOut(VersionSummaryOut):
    messages: list[dict[str, str]]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    output_format: str
    model: dict[str, Any]
    fallback_target: str
    warnings: list[dict[str, Any]]


class RenderIn(Schema):
    variables: dict[str, Any] = {}


class RenderOut(Schema):
    prompt: str
    version: int
    label: str | None
    content_hash: str
    messages: list[dict[str, str]]


class LabelMoveIn(Schema):
    version: int
    note: str = Field("", max_length=500)


class LabelMoveOut(Schema):
    from_version: int | None
    to_version: int
    actor: str | None
    note: str
    moved_at: datetime


class LabelOut(Schema):
    name: str
    version: int
    protected: bool
    updated_at: datetime
    history: list[LabelMoveOut]


class SchemaChangeOut(Schema):
    side: str = Field(..., description="input or output")
    path: str
    change: str
    breaking: bool
    detail: str


class PromptDiffOut(Schema):
    from_version: int
    to_version: int
    breaking: bool
    schema_changes: list[SchemaChangeOut]
    config: list[dict[str, Any]]
    messages: list[dict[str, Any]]
