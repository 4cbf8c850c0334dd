"""Writes of what apps/core owns: the staff-set GPU share of a squad."""

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core.exceptions import NotFound, PermissionDenied, ValidationFailed
from apps.core.models import GpuShare
from apps.squads.models import Squad

MAX_SHARE = 1000
# More GPU jobs of one squad at once than any installation runs (and inside the column).
MAX_RUNNING = 10_000


@transaction.atomic
def gpu_share_set(
    *,
    actor: AbstractBaseUser,
    squad_slug: str,
    share: int,
    max_running: int | None,
    request: HttpRequest | None = None,
) -> GpuShare:
    """Staff only: the squad's weight in the fair share of GPU workers (1 to 1000) and
    its limit on GPU jobs running at once (None: the installation's default)."""
    if not actor.is_staff:
        raise PermissionDenied("Only staff set a squad's share of GPU workers.", field="share")
    squad = Squad.objects.filter(slug=squad_slug).first()
    if squad is None:
        raise NotFound(f"Squad '{squad_slug}' not found.", field="squad")
    if isinstance(share, bool) or not isinstance(share, int) or not 1 <= share <= MAX_SHARE:
        raise ValidationFailed(f"share must be a whole number 1 to {MAX_SHARE}.", field="share")
    if max_running is not None and (
        isinstance(max_running, bool)
        or not isinstance(max_running, int)
        or not 1 <= max_running <= MAX_RUNNING
    ):
        raise ValidationFailed(
            f"max_running must be a whole number 1 to {MAX_RUNNING}, or empty for the default.",
            field="max_running",
        )
    row, _ = GpuShare.objects.select_for_update().get_or_create(squad=squad)
    before = {"share": row.share, "max_running": row.max_running}
    row.share, row.max_running = share, max_running
    row.updated_by, row.updated_at = actor, timezone.now()
    row.save()
    audit_log(
        actor=actor,
        action="core.gpu_share_set",
        squad=squad,
        target=row,
        data={"share": share, "max_running": max_running, "before": before},
        request=request,
    )
    return row
