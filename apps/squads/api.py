from django.http import HttpRequest
from ninja import Router, Status

from apps.squads import selectors, services
from apps.squads.access import squad_permissions, squad_roles
from apps.squads.models import Membership, Squad
from apps.squads.permissions import REGISTRY
from apps.squads.schemas import (
    MemberAddIn,
    MemberOut,
    MemberRolesIn,
    MeOut,
    SquadCreateIn,
    SquadListItemOut,
    SquadOut,
    SquadUpdateIn,
    TokenCreatedOut,
    TokenCreateIn,
    TokenOut,
)

router = Router(tags=["squads"])
tokens_router = Router(tags=["tokens"])


def squad_out(user: object, squad: Squad) -> dict:
    """The squad detail body (also served by the plain view in apps/squads/fast.py)."""
    perms = squad_permissions(user, squad.pk)
    return {
        "slug": squad.slug,
        "name": squad.name,
        "description": squad.description,
        "created_at": squad.created_at,
        "protected_labels": squad.protected_labels,
        "my_roles": squad_roles(user, squad.pk),
        "my_permissions": [p.codename for p in REGISTRY if p.codename in perms],
    }


def _member_out(m: Membership) -> dict:
    return {
        "username": m.user.get_username(),
        "roles": m.roles,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    }


@router.get("/me", response=MeOut, tags=["account"])
def me(request: HttpRequest) -> dict:
    return {"username": request.auth.get_username(), "is_staff": request.auth.is_staff}


@router.get("/squads", response=list[SquadListItemOut])
def squad_list(request: HttpRequest) -> list[dict]:
    roles = selectors.memberships_of_user(user=request.auth)
    return [
        {
            "slug": s.slug,
            "name": s.name,
            "description": s.description,
            "my_roles": roles[s.pk].roles if s.pk in roles else [],
        }
        for s in selectors.squad_list_for_user(user=request.auth)
    ]


@router.post("/squads", response={201: SquadOut})
def squad_create(request: HttpRequest, payload: SquadCreateIn) -> Status:
    squad = services.squad_create(actor=request.auth, request=request, **payload.dict())
    return Status(201, squad_out(request.auth, squad))


@router.get("/squads/{slug}", response=SquadOut)
def squad_detail(request: HttpRequest, slug: str) -> dict:
    squad = selectors.squad_get_for_user(user=request.auth, slug=slug)
    return squad_out(request.auth, squad)


@router.patch("/squads/{slug}", response=SquadOut)
def squad_update(request: HttpRequest, slug: str, payload: SquadUpdateIn) -> dict:
    squad = selectors.squad_get_for_user(user=request.auth, slug=slug)
    squad = services.squad_update(
        actor=request.auth, squad=squad, request=request, **payload.dict(exclude_unset=True)
    )
    return squad_out(request.auth, squad)


@router.get("/squads/{slug}/members", response=list[MemberOut])
def member_list(request: HttpRequest, slug: str) -> list[dict]:
    squad = selectors.squad_get_for_user(user=request.auth, slug=slug)
    return [_member_out(m) for m in selectors.membership_list(user=request.auth, squad=squad)]


@router.post("/squads/{slug}/members", response={201: MemberOut})
def member_add(request: HttpRequest, slug: str, payload: MemberAddIn) -> Status:
    squad = selectors.squad_get_for_user(user=request.auth, slug=slug)
    membership = services.membership_add_by_username(
        actor=request.auth,
        squad=squad,
        username=payload.username,
        roles=payload.roles,
        request=request,
    )
    return Status(201, _member_out(membership))


@router.patch("/squads/{slug}/members/{username}", response=MemberOut)
def member_set_roles(
    request: HttpRequest, slug: str, username: str, payload: MemberRolesIn
) -> dict:
    squad = selectors.squad_get_for_user(user=request.auth, slug=slug)
    membership = selectors.membership_get(user=request.auth, squad=squad, username=username)
    membership = services.membership_set_roles(
        actor=request.auth, membership=membership, roles=payload.roles, request=request
    )
    return _member_out(membership)


@router.delete("/squads/{slug}/members/{username}", response={204: None})
def member_remove(request: HttpRequest, slug: str, username: str) -> Status:
    squad = selectors.squad_get_for_user(user=request.auth, slug=slug)
    membership = selectors.membership_get(user=request.auth, squad=squad, username=username)
    services.membership_remove(actor=request.auth, membership=membership, request=request)
    return Status(204, None)


@tokens_router.get("", response=list[TokenOut])
def token_list(request: HttpRequest) -> list:
    return list(selectors.api_token_list_for_user(user=request.auth))


@tokens_router.post("", response={201: TokenCreatedOut})
def token_create(request: HttpRequest, payload: TokenCreateIn) -> Status:
    token, secret = services.api_token_create(
        actor=request.auth, name=payload.name, expires_at=payload.expires_at, request=request
    )
    return Status(201, {**TokenOut.from_orm(token).dict(), "token": secret})


@tokens_router.delete("/{token_id}", response=TokenOut)
def token_revoke(request: HttpRequest, token_id: int) -> object:
    token = selectors.api_token_get_for_user(user=request.auth, token_id=token_id)
    return services.api_token_revoke(actor=request.auth, token=token, request=request)
