import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from guardian.models import GroupObjectPermission

from apps.audit.services import audit_log
from apps.core.exceptions import (
    AuthenticationFailed,
    Conflict,
    PermissionDenied,
    ValidationFailed,
)
from apps.core.memo import HOT, read_through
from apps.core.validation import clean_slug
from apps.squads.access import (
    forget_permissions,
    forget_squad_permissions,
    require_squad_permission,
)
from apps.squads.models import NAME_MAX, SLUG_MAX, ApiToken, Membership, Squad
from apps.squads.permissions import (
    CHANGE_SQUAD,
    MANAGE_MEMBERS,
    Role,
    role_group_name,
    role_permissions,
)
from apps.squads.selectors import squad_forget, user_get_by_username

User = AbstractBaseUser


# --- validation -------------------------------------------------------------


def _clean_name(value: str, *, field: str = "name") -> str:
    value = (value or "").strip()
    if not value:
        raise ValidationFailed("Name must not be empty.", field=field)
    if len(value) > NAME_MAX:
        raise ValidationFailed(
            f"Name is {len(value)} characters long; the limit is {NAME_MAX}.", field=field
        )
    return value


def _clean_slug(value: str) -> str:
    return clean_slug(value, field="slug", limit=SLUG_MAX, underscores=False)


def _clean_roles(roles: Iterable[str]) -> list[str]:
    roles = list(roles or [])
    if not roles:
        raise ValidationFailed("A member needs at least one role.", field="roles")
    unknown = [r for r in roles if r not in Role.values]
    if unknown:
        raise ValidationFailed(
            f"Unknown role(s): {', '.join(map(str, unknown))}. "
            f"Roles are: {', '.join(Role.values)}.",
            field="roles",
        )
    # Keep the registry's order so the stored list is stable.
    return [r for r in Role.values if r in roles]


# --- role groups --------------------------------------------------------------


def squad_roles_sync(*, squad: Squad, using: str = "default") -> None:
    """Make each role group of the squad hold exactly its registry permissions, in the
    database `using` (the post-migrate hook passes the migrated one)."""
    from django.contrib.auth.models import Permission

    ct = ContentType.objects.db_manager(using).get_for_model(Squad)
    perms = {p.codename: p for p in Permission.objects.using(using).filter(content_type=ct)}
    for role in Role:
        group, _ = Group.objects.using(using).get_or_create(name=role_group_name(squad.pk, role))
        wanted = {perms[c].pk for c in role_permissions(role) if c in perms}
        current = GroupObjectPermission.objects.using(using).filter(
            group=group, content_type=ct, object_pk=str(squad.pk)
        )
        have = set(current.values_list("permission_id", flat=True))
        current.exclude(permission_id__in=wanted).delete()
        GroupObjectPermission.objects.using(using).bulk_create(
            [
                GroupObjectPermission(
                    group=group, permission_id=pid, content_type=ct, object_pk=str(squad.pk)
                )
                for pid in wanted - have
            ]
        )
    members = Membership.objects.using(using).filter(squad=squad)
    forget_squad_permissions(squad.pk, list(members.values_list("user_id", flat=True)))


def squad_roles_sync_all(*, using: str = "default") -> None:
    for squad in Squad.objects.using(using).all():
        squad_roles_sync(squad=squad, using=using)


def _set_role_groups(
    *, squad: Squad, user: User, roles: Iterable[str], actor: User | None = None
) -> None:
    wanted = {role_group_name(squad.pk, r) for r in roles}
    all_groups = Group.objects.filter(name__in=[role_group_name(squad.pk, r) for r in Role])
    for group in all_groups:
        if group.name in wanted:
            group.user_set.add(user)
        else:
            group.user_set.remove(user)
    # The actor may be the same person through another object (self-service).
    forget_permissions(user, *([actor] if actor is not None else []), squad_id=squad.pk)


# --- squads -----------------------------------------------------------------


@transaction.atomic
def squad_create(
    *,
    actor: User,
    name: str,
    slug: str,
    description: str = "",
    request: HttpRequest | None = None,
) -> Squad:
    """Create a squad; the actor becomes its first owner."""
    if not actor.is_authenticated:
        raise PermissionDenied("Sign in to create a squad.")
    if settings.STUDIO_SQUAD_CREATORS == "staff" and not actor.is_staff:
        raise PermissionDenied("Only staff can create squads on this server.")
    name, slug = _clean_name(name), _clean_slug(slug)
    description = _clean_description(description)
    if Squad.objects.filter(slug=slug).exists():
        raise Conflict(f"A squad with slug '{slug}' already exists.", field="slug")
    squad = Squad.objects.create(name=name, slug=slug, description=description, created_by=actor)
    squad_roles_sync(squad=squad)
    audit_log(
        actor=actor,
        action="squad.created",
        squad=squad,
        target=squad,
        data={"name": name, "slug": slug},
        request=request,
    )
    _membership_add(actor=actor, squad=squad, user=actor, roles=[Role.OWNER], request=request)
    return squad


def _clean_description(value: str | None) -> str:
    value = (value or "").strip()
    if len(value) > 2000:
        raise ValidationFailed(
            f"Description is {len(value)} characters long; the limit is 2000.",
            field="description",
        )
    return value


@transaction.atomic
def squad_update(
    *,
    actor: User,
    squad: Squad,
    name: str | None = None,
    description: str | None = None,
    request: HttpRequest | None = None,
) -> Squad:
    """Rename the squad or edit its description. Protected labels belong to the approval
    policy (reviews.services.approvals.approval_policy_update)."""
    require_squad_permission(actor, squad, CHANGE_SQUAD)
    changes: dict[str, list[str]] = {}
    if name is not None:
        name = _clean_name(name)
        if name != squad.name:
            changes["name"] = [squad.name, name]
            squad.name = name
    if description is not None:
        description = _clean_description(description)
        if description != squad.description:
            changes["description"] = [squad.description, description]
            squad.description = description
    if changes:
        squad.save(update_fields=list(changes))
        squad_forget(squad.slug)
        audit_log(
            actor=actor,
            action="squad.updated",
            squad=squad,
            target=squad,
            data={"changes": changes},
            request=request,
        )
    return squad


# --- memberships --------------------------------------------------------------


def _owner_count(squad: Squad) -> int:
    # The owner group is what grants the permissions, so count there.
    return Group.objects.get(name=role_group_name(squad.pk, Role.OWNER)).user_set.count()


def _lock_squad(squad: Squad) -> None:
    # Serialise membership changes per squad so "at least one owner" holds
    # under concurrent requests.
    Squad.objects.select_for_update().filter(pk=squad.pk).first()


def _membership_add(
    *, actor: User | None, squad: Squad, user: User, roles: list[str], request: HttpRequest | None
) -> Membership:
    roles = _clean_roles(roles)
    if Membership.objects.filter(squad=squad, user=user).exists():
        raise Conflict(
            f"'{user.get_username()}' is already a member of squad '{squad.slug}'.",
            field="username",
        )
    membership = Membership.objects.create(squad=squad, user=user, roles=roles)
    _set_role_groups(squad=squad, user=user, roles=roles, actor=actor)
    audit_log(
        actor=actor,
        action="squad.member_added",
        squad=squad,
        target=membership,
        data={"username": user.get_username(), "roles": roles},
        request=request,
    )
    return membership


@transaction.atomic
def membership_add(
    *,
    actor: User,
    squad: Squad,
    user: User,
    roles: list[str],
    request: HttpRequest | None = None,
) -> Membership:
    require_squad_permission(actor, squad, MANAGE_MEMBERS)
    _lock_squad(squad)
    if not user.is_active:
        raise ValidationFailed(f"User '{user.get_username()}' is inactive.", field="username")
    return _membership_add(actor=actor, squad=squad, user=user, roles=roles, request=request)


@transaction.atomic
def membership_add_by_username(
    *,
    actor: User,
    squad: Squad,
    username: str,
    roles: list[str],
    request: HttpRequest | None = None,
) -> Membership:
    """Add the user named `username`: what the API and the members page call.

    The permission is checked before the name is looked up, so only someone who may
    manage the squad's members learns whether a username exists (everyone else gets
    the same 403 for a real and an unknown name)."""
    require_squad_permission(actor, squad, MANAGE_MEMBERS)
    user = user_get_by_username(username=(username or "").strip())
    return membership_add(actor=actor, squad=squad, user=user, roles=roles, request=request)


@transaction.atomic
def membership_set_roles(
    *,
    actor: User,
    membership: Membership,
    roles: list[str],
    request: HttpRequest | None = None,
) -> Membership:
    squad = membership.squad
    require_squad_permission(actor, squad, MANAGE_MEMBERS)
    _lock_squad(squad)
    membership.refresh_from_db()
    roles = _clean_roles(roles)
    before = list(membership.roles)
    if roles == before:
        return membership
    if (
        membership.has_role(Role.OWNER)
        and Role.OWNER.value not in roles
        and _owner_count(squad) <= 1
    ):
        raise Conflict(
            f"'{membership.user.get_username()}' is the last owner of squad '{squad.slug}'; "
            "make someone else an owner first.",
            field="roles",
        )
    membership.roles = roles
    membership.updated_at = timezone.now()
    membership.save(update_fields=["roles", "updated_at"])
    _set_role_groups(squad=squad, user=membership.user, roles=roles, actor=actor)
    audit_log(
        actor=actor,
        action="squad.member_roles_changed",
        squad=squad,
        target=membership,
        data={"username": membership.user.get_username(), "before": before, "after": roles},
        request=request,
    )
    return membership


@transaction.atomic
def membership_remove(
    *, actor: User, membership: Membership, request: HttpRequest | None = None
) -> None:
    squad = membership.squad
    require_squad_permission(actor, squad, MANAGE_MEMBERS)
    _lock_squad(squad)
    membership.refresh_from_db()
    if membership.has_role(Role.OWNER) and _owner_count(squad) <= 1:
        raise Conflict(
            f"'{membership.user.get_username()}' is the last owner of squad '{squad.slug}'; "
            "a squad always keeps at least one owner.",
            field="username",
        )
    _set_role_groups(squad=squad, user=membership.user, roles=[], actor=actor)
    audit_log(
        actor=actor,
        action="squad.member_removed",
        squad=squad,
        target=membership,
        data={"username": membership.user.get_username(), "roles": membership.roles},
        request=request,
    )
    membership.delete()


# --- API tokens ----------------------------------------------------------------


@transaction.atomic
def api_token_create(
    *,
    actor: User,
    name: str,
    expires_at: datetime | None = None,
    request: HttpRequest | None = None,
) -> tuple[ApiToken, str]:
    """Create a personal token; returns it and the secret, which is never stored or shown again."""
    if not actor.is_authenticated:
        raise PermissionDenied("Sign in to create a token.")
    name = _clean_name(name)
    if expires_at is not None:
        if timezone.is_naive(expires_at):
            raise ValidationFailed(
                "Expiry must include a time zone (for example 2030-01-01T00:00:00Z).",
                field="expires_at",
            )
        if expires_at <= timezone.now():
            raise ValidationFailed("Expiry must be in the future.", field="expires_at")
    secret = ApiToken.PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=actor,
        name=name,
        key_prefix=secret[: len(ApiToken.PREFIX) + 6],
        key_hash=ApiToken.hash_key(secret),
        expires_at=expires_at,
    )
    audit_log(
        actor=actor,
        action="token.created",
        target=token,
        data={"name": name, "expires_at": expires_at},
        request=request,
    )
    return token, secret


@transaction.atomic
def api_token_revoke(
    *, actor: User, token: ApiToken, request: HttpRequest | None = None
) -> ApiToken:
    """Revoke a token. Its owner may revoke it; so may staff (from the admin console)."""
    if token.user_id != actor.pk and not actor.is_staff:
        raise PermissionDenied("You can only revoke your own tokens.")
    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is not None:
        return token
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    api_token_forget(token.key_hash)
    audit_log(
        actor=actor,
        action="token.revoked",
        target=token,
        data={"name": token.name, "owner": token.user.get_username()},
        request=request,
    )
    return token


TOKEN_CACHE_TTL = 300


def _token_cache_key(key_hash: str) -> str:
    return f"auth:token:{key_hash}"


def api_token_forget(*key_hashes: str) -> None:
    """Drop cached token entries (revocation, user changes): now and at commit."""
    keys = [_token_cache_key(h) for h in key_hashes]
    HOT.pop(*keys)
    if keys:
        cache.delete_many(keys)
        transaction.on_commit(lambda: (HOT.pop(*keys), cache.delete_many(keys)))


def _token_entry(key_hash: str) -> dict[str, Any] | None:
    token = ApiToken.objects.select_related("user").filter(key_hash=key_hash).first()
    if token is None:
        return None
    user = token.user
    return {
        "token_id": token.pk,
        "revoked": token.revoked_at is not None,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
        "user": {
            "id": user.pk,
            "username": user.get_username(),
            "is_active": user.is_active,
            "is_staff": user.is_staff,
            "is_superuser": user.is_superuser,
        },
    }


def api_token_authenticate(*, raw: str) -> User:
    """The user behind a bearer token, or AuthenticationFailed with the reason.

    The token's state and its user's flags are cached for TOKEN_CACHE_TTL seconds
    (revocation and user changes drop the entry), so a warm request costs no query.
    The returned user is built from that entry: enough for permission checks,
    audit and ownership, not for editing the user.
    """
    if not raw.startswith(ApiToken.PREFIX):
        raise AuthenticationFailed("Invalid token.")
    key_hash = ApiToken.hash_key(raw)
    key = _token_cache_key(key_hash)
    entry = read_through(key, lambda: _token_entry(key_hash), TOKEN_CACHE_TTL)
    if entry is None:
        raise AuthenticationFailed("Invalid token.")
    now = timezone.now()
    if entry["revoked"]:
        raise AuthenticationFailed("Token revoked.")
    if entry["expires_at"] is not None and entry["expires_at"] <= now:
        raise AuthenticationFailed("Token expired.")
    if not entry["user"]["is_active"]:
        raise AuthenticationFailed("The token's user is inactive.")
    last_used = entry["last_used_at"]
    resolution = settings.STUDIO_TOKEN_LAST_USED_RESOLUTION
    if last_used is None or (now - last_used).total_seconds() >= resolution:
        ApiToken.objects.filter(pk=entry["token_id"]).update(last_used_at=now)
        entry = {**entry, "last_used_at": now}
        cache.set(key, entry, TOKEN_CACHE_TTL)
        HOT.set(key, entry)
    return _detached_user(entry["user"])


def _detached_user(fields: dict[str, Any]) -> User:
    user_model = get_user_model()
    user = user_model(
        pk=fields["id"],
        **{user_model.USERNAME_FIELD: fields["username"]},
        is_active=fields["is_active"],
        is_staff=fields["is_staff"],
        is_superuser=fields["is_superuser"],
    )
    user._state.adding = False
    user._state.db = "default"
    return user


def user_changed(*, user: User) -> None:
    """A user's flags changed (deactivated, staff): their cached tokens must be re-read."""
    api_token_forget(*ApiToken.objects.filter(user=user).values_list("key_hash", flat=True))
