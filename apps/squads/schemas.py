from datetime import datetime

from ninja import Field, Schema

from apps.squads.models import NAME_MAX, SLUG_MAX
from apps.squads.permissions import Role


class SquadCreateIn(Schema):
    name: str = Field(..., max_length=NAME_MAX)
    slug: str = Field(..., max_length=SLUG_MAX)
    description: str = Field("", max_length=2000)


class SquadUpdateIn(Schema):
    # Protected labels are part of the approval policy: PUT /squads/{slug}/approval-policy.
    model_config = {"extra": "forbid"}

    name: str | None = Field(None, max_length=NAME_MAX)
    description: str | None = Field(None, max_length=2000)


class SquadOut(Schema):
    slug: str
    name: str
    description: str
    created_at: datetime
    protected_labels: list[str]
    my_roles: list[Role]
    my_permissions: list[str]


class SquadListItemOut(Schema):
    slug: str
    name: str
    description: str
    my_roles: list[Role]


class MemberAddIn(Schema):
    username: str = Field(..., max_length=150)
    roles: list[Role] = Field(..., min_length=1)


class MemberRolesIn(Schema):
    roles: list[Role] = Field(..., min_length=1)


class MemberOut(Schema):
    username: str
    roles: list[Role]
    created_at: datetime
    updated_at: datetime


class TokenCreateIn(Schema):
    name: str = Field(..., max_length=NAME_MAX)
    expires_at: datetime | None = None


class TokenOut(Schema):
    id: int
    name: str
    key_prefix: str
    status: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(..., description="The secret. Shown this once; store it now.")


class MeOut(Schema):
    username: str
    is_staff: bool
