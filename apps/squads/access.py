"""Permission checks against the registry.

The truth is django-guardian's object permissions (role groups on the squad,
plus any direct grant from the admin console). The set of codenames a user
holds on a squad is read in one query and cached: per request on the user
object and in the shared cache for PERMISSIONS_TTL seconds (and for a second in process
memory, apps/core/memo.py). Membership changes
and role syncs drop the cached sets at once; a direct grant made in guardian's
admin page takes effect within PERMISSIONS_TTL.
"""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db import transaction
from guardian.models import GroupObjectPermission, UserObjectPermission

from apps.core.exceptions import NotFound, PermissionDenied
from apps.core.memo import HOT
from apps.squads.models import Squad
from apps.squads.permissions import REGISTRY, VIEW_SQUAD, SquadPermission

User = AbstractBaseUser | AnonymousUser
PERMISSIONS_TTL = 300
ALL_CODENAMES = frozenset(p.codename for p in REGISTRY)


def permission_cache_key(user_id: int, squad_id: int) -> str:
    return f"perm:{user_id}:{squad_id}"


def prime_permissions(user: User, squad_id: int, perms: frozenset[str]) -> None:
    """Hand over a permission set the caller already read from the cache (one round trip
    for several keys) so squad_permissions does not fetch it again."""
    if user.is_authenticated:
        user.__dict__.setdefault("_studio_perms", {})[squad_id] = perms


def _roles_key(user_id: int, squad_id: int) -> str:
    return f"roles:{user_id}:{squad_id}"


def _load(user_id: int, squad_id: int) -> frozenset[str]:
    ct = ContentType.objects.get_for_model(Squad)
    via_groups = GroupObjectPermission.objects.filter(
        group__user=user_id, content_type=ct, object_pk=str(squad_id)
    ).values_list("permission__codename", flat=True)
    direct = UserObjectPermission.objects.filter(
        user=user_id, content_type=ct, object_pk=str(squad_id)
    ).values_list("permission__codename", flat=True)
    return frozenset(via_groups.union(direct))


def squad_permissions(user: User, squad_id: int) -> frozenset[str]:
    """Codenames `user` holds on the squad (all of them for active superusers)."""
    if not user.is_authenticated or not user.is_active:
        return frozenset()
    if user.is_superuser:
        return ALL_CODENAMES
    local: dict[int, frozenset[str]] = user.__dict__.setdefault("_studio_perms", {})
    if squad_id not in local:
        key = permission_cache_key(user.pk, squad_id)
        perms = HOT.get(key)
        if perms is None:
            perms = cache.get(key)
            if perms is None:
                perms = _load(user.pk, squad_id)
                cache.set(key, perms, PERMISSIONS_TTL)
            HOT.set(key, perms)
        local[squad_id] = perms
    return local[squad_id]


def prime_roles(user: User, squad_id: int, roles: list[str]) -> None:
    if user.is_authenticated:
        user.__dict__.setdefault("_studio_roles", {})[squad_id] = roles


def roles_cache_key(user_id: int, squad_id: int) -> str:
    return _roles_key(user_id, squad_id)


def squad_roles(user: User, squad_id: int) -> list[str]:
    """The roles of the user's membership in the squad (cached like the permissions)."""
    if not user.is_authenticated:
        return []
    local = user.__dict__.get("_studio_roles", {})
    if squad_id in local:
        return local[squad_id]
    key = _roles_key(user.pk, squad_id)
    roles = HOT.get(key)
    if roles is None:
        roles = cache.get(key)
    if roles is None:
        from apps.squads.models import Membership

        found = (
            Membership.objects.filter(user_id=user.pk, squad_id=squad_id)
            .order_by()
            .values_list("roles", flat=True)
            .first()
        )
        roles = list(found or [])
        cache.set(key, roles, PERMISSIONS_TTL)
    HOT.set(key, roles)
    return roles


def forget_permissions(*users: User, squad_id: int) -> None:
    """Drop cached permission sets after role changes (now, and again at commit so a
    request that re-read the old groups meanwhile does not leave them behind)."""
    keys = []
    for user in users:
        if user is None or not user.is_authenticated:
            continue
        user.__dict__.get("_studio_perms", {}).pop(squad_id, None)
        user.__dict__.get("_studio_roles", {}).pop(squad_id, None)
        keys += [permission_cache_key(user.pk, squad_id), _roles_key(user.pk, squad_id)]
    forget_permissions_by_key(keys)


def forget_permissions_by_key(keys: list[str]) -> None:
    if keys:
        HOT.pop(*keys)
        cache.delete_many(keys)
        transaction.on_commit(lambda: (HOT.pop(*keys), cache.delete_many(keys)))


def forget_squad_permissions(squad_id: int, user_ids: list[int]) -> None:
    keys = [permission_cache_key(uid, squad_id) for uid in user_ids]
    forget_permissions_by_key(keys + [_roles_key(uid, squad_id) for uid in user_ids])


def has_squad_permission(user: User, squad: Squad, permission: SquadPermission) -> bool:
    return permission.codename in squad_permissions(user, squad.pk)


def require_squad_permission(user: User, squad: Squad, permission: SquadPermission) -> None:
    """Raise NotFound when the user may not see the squad (or the permission is hidden),
    PermissionDenied when they see it but may not do this."""
    perms = squad_permissions(user, squad.pk)
    if permission.codename in perms:
        return
    if permission.hidden or VIEW_SQUAD.codename not in perms:
        raise NotFound(f"Squad '{squad.slug}' not found.")
    raise PermissionDenied(
        f"You do not have permission to {permission.description[0].lower()}"
        f"{permission.description[1:]} in squad '{squad.slug}'."
    )
