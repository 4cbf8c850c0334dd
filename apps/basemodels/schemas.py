from datetime import datetime

from ninja import Schema


class BaseModelRegisterIn(Schema):
    name: str
    source_kind: str
    source: str
    revision: str = ""
    chat_template: str = ""
    licence: str = ""
    notes: str = ""
    expected_sha256: dict[str, str] = {}


class BaseModelUpdateIn(Schema):
    licence: str | None = None
    notes: str | None = None


class BaseModelVersionOut(Schema):
    number: int
    status: str
    refusal_reason: str
    refusal: str
    source_kind: str
    source: str
    revision: str
    architecture: str
    model_type: str
    parameters: int | None
    context_length: int | None
    dtype: str
    chat_template_source: str
    manifest: dict[str, str]
    manifest_sha256: str
    licence: str
    notes: str
    created_at: datetime
    registered_at: datetime | None


class BaseModelOut(Schema):
    name: str
    current: BaseModelVersionOut | None
    versions: list[BaseModelVersionOut]
