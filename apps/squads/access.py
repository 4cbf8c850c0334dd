"""Permission checks against the registry, through django-guardian."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from guardian.core import ObjectPermissionChecker

from apps.core.exceptions import NotFound, PermissionDenied
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_SQUAD, SquadPermission

User = AbstractBaseUser | AnonymousUser


def _checker(user: User) -> ObjectPermissionChecker:
    # One checker per user object: guardian caches what it fetched, so a
    # request that checks several permissions on one squad queries once.
    checker = getattr(user, "_studio_perm_checker", None)
    if checker is None:
        checker = ObjectPermissionChecker(user)
        user._studio_perm_checker = checker  # type: ignore[union-attr]
    return checker


def forget_permissions(user: User) -> None:
    """Drop the cached checker after the user's roles changed."""
    if hasattr(user, "_studio_perm_checker"):
        del user._studio_perm_checker  # type: ignore[union-attr]


def has_squad_permission(user: User, squad: Squad, permission: SquadPermission) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return _checker(user).has_perm(permission.perm, squad)


def require_squad_permission(user: User, squad: Squad, permission: SquadPermission) -> None:
    """Raise NotFound when the user may not see the squad (or the permission is hidden),
    PermissionDenied when they see it but may not do this."""
    if has_squad_permission(user, squad, permission):
        return
    if permission.hidden or not has_squad_permission(user, squad, VIEW_SQUAD):
        raise NotFound(f"Squad '{squad.slug}' not found.")
    raise PermissionDenied(
        f"You do not have permission to {permission.description[0].lower()}"
        f"{permission.description[1:]} in squad '{squad.slug}'."
    )
