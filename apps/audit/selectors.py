from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from apps.audit.models import AuditEvent, ChainVerification
from apps.core.exceptions import NotFound, PermissionDenied, ValidationFailed
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_AUDIT
from apps.squads.selectors import squad_get_for_user

User = AbstractBaseUser | AnonymousUser


@dataclass(frozen=True)
class AuditFilter:
    squad: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None


def audit_squad_get_for_user(*, user: User, slug: str) -> Squad:
    """The squad whose audit log the user may read: its owners and compliance leads
    (VIEW_AUDIT), or staff."""
    if user.is_authenticated and user.is_staff:
        squad = Squad.objects.filter(slug=slug).first()
        if squad is None:
            raise NotFound(f"Squad '{slug}' not found.")
        return squad
    return squad_get_for_user(user=user, slug=slug, permission=VIEW_AUDIT)


def audit_event_list_for_user(*, user: User, filters: AuditFilter) -> QuerySet[AuditEvent]:
    """Events the user may read, filtered. A squad's owners and compliance leads read its
    events; staff read everything, including events outside any squad."""
    events = AuditEvent.objects.all()
    if filters.squad:
        squad = audit_squad_get_for_user(user=user, slug=filters.squad)
        events = events.filter(squad_id=squad.pk)
    elif not user.is_staff:
        raise PermissionDenied(
            "Name a squad (squad=<slug>) whose audit log you may read; "
            "only staff can read the whole log."
        )
    if filters.since and filters.until and filters.since > filters.until:
        raise ValidationFailed("'since' is after 'until'.", field="since")
    if filters.since:
        events = events.filter(created_at__gte=filters.since)
    if filters.until:
        events = events.filter(created_at__lt=filters.until)
    if filters.actor:
        events = events.filter(actor_label=filters.actor)
    if filters.action:
        if filters.action.endswith("*"):
            events = events.filter(action__startswith=filters.action[:-1])
        else:
            events = events.filter(action=filters.action)
    return events.order_by("sequence")


def chain_verification_get_for_user(*, user: User, verification_id: int) -> ChainVerification:
    if not user.is_staff:
        raise NotFound(f"Verification {verification_id} not found.")
    verification = ChainVerification.objects.filter(pk=verification_id).first()
    if verification is None:
        raise NotFound(f"Verification {verification_id} not found.")
    return verification
