import json
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.http import HttpRequest
from django.utils import timezone

from apps.audit import chain
from apps.audit.models import GENESIS_HASH, AuditEvent, ChainVerification
from apps.core.exceptions import PermissionDenied
from apps.core.http import client_ip

# Any constant key: one chain, one lock.
_CHAIN_LOCK_KEY = 0x53747564696F  # "Studio"


def _lock_chain() -> None:
    """Serialise appends so sequence and prev_hash are taken from the true tail.

    PostgreSQL: a transaction-scoped advisory lock, released at commit. SQLite:
    the IMMEDIATE transaction already holds the database write lock.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])


def audit_log(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    action: str,
    squad: models.Model | None = None,
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str | int = "",
    data: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> AuditEvent:
    """Append one event to the chain. Call inside the transaction of the change it records."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_log must run inside the transaction of the change it records")
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or target.pk
    if actor is not None and not actor.is_authenticated:
        actor = None
    # Hash what the database will give back (apps.audit.chain.storable), so a legal
    # value never reads as tampering later.
    payload = chain.storable(json.loads(json.dumps(data or {}, cls=DjangoJSONEncoder)))
    _lock_chain()
    last = AuditEvent.objects.order_by("-sequence").values_list("sequence", "hash").first()
    sequence, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
    fields: dict[str, Any] = {
        "sequence": sequence,
        "created_at": timezone.now(),
        "actor_id": actor.pk if actor is not None else None,
        "actor_label": actor.get_username() if actor is not None else "system",
        "squad_id": squad.pk if squad is not None else None,
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id),
        "data": payload,
        "ip": chain.storable_ip(client_ip(request)),
    }
    event_hash = chain.event_hash(prev_hash, chain.canonical(**fields))
    return AuditEvent.objects.create(**fields, prev_hash=prev_hash, hash=event_hash)


def chain_verify() -> chain.ChainReport:
    return chain.verify(chain.iter_chain_rows(AuditEvent.objects.all()))


@transaction.atomic
def chain_verification_request(*, actor: AbstractBaseUser) -> ChainVerification:
    """Queue a verification of the whole chain on the default queue (staff only)."""
    from apps.audit.tasks import audit_chain_verify

    if not actor.is_staff:
        raise PermissionDenied("Only staff can verify the whole audit chain.")
    verification = ChainVerification.objects.create(requested_by=actor)
    audit_log(actor=actor, action="audit.verification_requested", target=verification)
    transaction.on_commit(lambda: audit_chain_verify.delay(verification.pk))
    return verification


def chain_verification_run(*, verification_id: int) -> ChainVerification:
    """Run a queued verification and store the result. Idempotent: a finished one is left as is."""
    with transaction.atomic():
        verification = ChainVerification.objects.select_for_update().get(pk=verification_id)
        if verification.finished_at is not None:
            return verification
        verification.status = ChainVerification.Status.RUNNING
        verification.started_at = timezone.now()
        verification.save(update_fields=["status", "started_at"])
    try:
        report = chain_verify()
    except Exception as exc:
        verification.status = ChainVerification.Status.FAILED
        verification.detail = f"verification could not run: {exc}"
        verification.finished_at = timezone.now()
        verification.save(update_fields=["status", "detail", "finished_at"])
        raise
    verification.status = (
        ChainVerification.Status.INTACT if report.intact else ChainVerification.Status.BROKEN
    )
    verification.events_checked = report.events_checked
    verification.first_broken_sequence = report.first_broken_sequence
    verification.detail = report.reason
    verification.finished_at = timezone.now()
    verification.save(
        update_fields=[
            "status",
            "events_checked",
            "first_broken_sequence",
            "detail",
            "finished_at",
        ]
    )
    return verification


@transaction.atomic
def audit_export_record(
    *, actor: AbstractBaseUser, filters: dict[str, Any], fmt: str, request: HttpRequest | None
) -> None:
    """Record that someone exported the log (the export itself is a read)."""
    squad = None
    if filters.get("squad"):
        from apps.squads.models import Squad

        squad = Squad.objects.filter(slug=filters["squad"]).first()
    audit_log(
        actor=actor,
        action="audit.exported",
        squad=squad,
        data={"format": fmt, "filters": {k: v for k, v in filters.items() if v}},
        request=request,
    )
