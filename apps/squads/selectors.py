from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.cache import cache
from django.db import transaction
from django.db.models import QuerySet
from guardian.shortcuts import get_objects_for_user

from apps.core.exceptions import NotFound
from apps.core.memo import HOT
from apps.squads.access import (
    permission_cache_key,
    prime_permissions,
    prime_roles,
    require_squad_permission,
    roles_cache_key,
)
from apps.squads.models import ApiToken, Membership, Squad
from apps.squads.permissions import VIEW_SQUAD, SquadPermission

User = AbstractBaseUser | AnonymousUser


SQUAD_TTL = 3600
_SQUAD_FIELDS = (
    "id",
    "slug",
    "name",
    "description",
    "created_at",
    "created_by_id",
    "protected_labels",
)


def squad_cache_key(slug: str) -> str:
    return f"squad:row:{slug}"


# Squad slugs never change: their ids can live in process memory.
SQUAD_IDS: dict[str, int] = {}


def squad_by_slug(slug: str, user: User | None = None) -> Squad | None:
    """The squad row, from this process's memo or the shared cache when warm
    (`squad_forget` drops both). With a user whose squad id is known, their permission
    set and roles come from the memo too, or in the same cache round trip."""
    key = squad_cache_key(slug)
    squad_id = SQUAD_IDS.get(slug)
    fields = HOT.get(key)
    if squad_id is not None and user is not None and user.is_authenticated:
        perm_key = permission_cache_key(user.pk, squad_id)
        roles_key = roles_cache_key(user.pk, squad_id)
        perms, roles = HOT.get(perm_key), HOT.get(roles_key)
        wanted = [k for k, v in ((key, fields), (perm_key, perms), (roles_key, roles)) if v is None]
        if wanted:  # one round trip for whatever the memo lacks
            hit = cache.get_many(wanted)
            if fields is None and (fields := hit.get(key)) is not None:
                HOT.set(key, fields)
            if perms is None and (perms := hit.get(perm_key)) is not None:
                HOT.set(perm_key, perms)
            if roles is None and (roles := hit.get(roles_key)) is not None:
                HOT.set(roles_key, roles)
        if perms is not None:
            prime_permissions(user, squad_id, perms)
        if roles is not None:
            prime_roles(user, squad_id, roles)
    elif fields is None and (fields := cache.get(key)) is not None:
        HOT.set(key, fields)
    if fields is None:
        fields = Squad.objects.filter(slug=slug).order_by().values(*_SQUAD_FIELDS).first()
        if fields is None:
            return None
        cache.set(key, fields, SQUAD_TTL)
        HOT.set(key, fields)
    SQUAD_IDS[slug] = fields["id"]
    # A list of its own: `fields` is shared with every request of this process (HOT).
    squad = Squad(**{**fields, "protected_labels": list(fields["protected_labels"] or [])})
    squad._state.adding = False
    squad._state.db = "default"
    return squad


def squad_forget(slug: str) -> None:
    """Drop the cached squad row after a change: now, and again at commit (a reader may
    have cached the old row meanwhile). Other web processes drop their memo of it within
    STUDIO_HOT_MEMO_SECONDS."""
    key = squad_cache_key(slug)
    HOT.pop(key)
    cache.delete(key)
    transaction.on_commit(lambda: (HOT.pop(key), cache.delete(key)))


def squad_get_for_user(*, user: User, slug: str, permission: SquadPermission = VIEW_SQUAD) -> Squad:
    """The squad, if the user holds `permission` on it; 404 for missing and hidden alike."""
    squad = squad_by_slug(slug, user)
    if squad is None:
        raise NotFound(f"Squad '{slug}' not found.")
    require_squad_permission(user, squad, permission)
    return squad


def squad_list_for_user(*, user: User) -> QuerySet[Squad]:
    if not user.is_authenticated:
        return Squad.objects.none()
    return get_objects_for_user(
        user, VIEW_SQUAD.perm, klass=Squad, accept_global_perms=False
    ).order_by("name")


def membership_list(*, user: User, squad: Squad) -> QuerySet[Membership]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    return squad.memberships.select_related("user").order_by("user__username")


def membership_get(*, user: User, squad: Squad, username: str) -> Membership:
    require_squad_permission(user, squad, VIEW_SQUAD)
    membership = squad.memberships.select_related("user").filter(user__username=username).first()
    if membership is None:
        raise NotFound(f"'{username}' is not a member of squad '{squad.slug}'.", field="username")
    return membership


def memberships_of_user(*, user: User) -> dict[int, Membership]:
    """The user's memberships keyed by squad id (for role badges)."""
    if not user.is_authenticated:
        return {}
    return {m.squad_id: m for m in Membership.objects.filter(user=user)}


def api_token_list_for_user(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def api_token_get_for_user(*, user: User, token_id: int) -> ApiToken:
    token = ApiToken.objects.filter(user=user, pk=token_id).first()
    if token is None:
        raise NotFound(f"Token {token_id} not found.")
    return token


def user_get_by_username(*, username: str) -> AbstractBaseUser:
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise NotFound(f"No active user named '{username}'.", field="username")
    return user
