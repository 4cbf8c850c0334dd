import json
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.cache import cache
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.http import HttpRequest
from django.utils import timezone

from apps.audit import chain, checkpoints
from apps.audit.models import GENESIS_HASH, AuditEvent, ChainVerification
from apps.core.exceptions import PermissionDenied, ValidationFailed
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


CHECKPOINT_DUE_KEY = "studio:audit:checkpoint-due"


def chain_head() -> tuple[int, str]:
    """(sequence, hash) of the newest committed event; (0, genesis) for an empty chain."""
    head = AuditEvent.objects.order_by("-sequence").values_list("sequence", "hash").first()
    return head or (0, GENESIS_HASH)


def checkpoint_emit(*, reason: str) -> checkpoints.Checkpoint:
    """Sign the chain's head and publish it outside the database (log line, checkpoint
    file). Call after commit (transaction.on_commit or outside a transaction): a checkpoint
    of a head that is then rolled back would later read as a removed tail."""
    sequence, head_hash = chain_head()
    checkpoint = checkpoints.sign(sequence=sequence, head_hash=head_hash, reason=reason)
    checkpoints.publish(checkpoint)
    return checkpoint


def checkpoint_emit_if_due() -> checkpoints.Checkpoint | None:
    """The scheduled checkpoint (the workers' sweeper calls this every minute): one per
    STUDIO_AUDIT_CHECKPOINT_SECONDS across the workers sharing the cache; 0 turns it off."""
    interval = settings.STUDIO_AUDIT_CHECKPOINT_SECONDS
    if interval <= 0 or not cache.add(CHECKPOINT_DUE_KEY, 1, timeout=interval):
        return None
    return checkpoint_emit(reason="schedule")


def checkpoint_anchors(source: str) -> list[chain.Anchor]:
    """The signed checkpoints in a file or at a URL as anchors for `chain.verify`; raises
    checkpoints.CheckpointRefused for one that does not verify."""
    return [
        chain.Anchor(
            sequence=c.sequence,
            hash=c.hash,
            source=f"{c.reason} checkpoint signed {c.signed_at} with key {c.key_id}",
        )
        for c in checkpoints.load(source)
    ]


def default_checkpoint_source() -> str | None:
    """The configured checkpoint file, when there is one."""
    path = checkpoints.checkpoint_file()
    return str(path) if path is not None and path.exists() else None


REANCHOR_ACTION = "audit.chain_reanchored"


def _reanchor_message(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def reanchored_rows() -> list[chain.Reanchored]:
    """Rows acknowledged by `audit.chain_reanchored` events whose signature verifies with a
    checkpoint key (the database alone cannot forge one); others are not honoured."""
    events = AuditEvent.objects.filter(action=REANCHOR_ACTION)
    found = []
    for sequence, actor, data in events.values_list("sequence", "actor_label", "data"):
        statement = {k: v for k, v in data.items() if k not in ("key_id", "signature")}
        problem = checkpoints.verify_bytes(
            _reanchor_message(statement),
            key_id=str(data.get("key_id", "")),
            signature=str(data.get("signature", "")),
        )
        if problem is not None:
            continue
        for row in statement.get("rows", []):
            found.append(
                chain.Reanchored(
                    sequence=row["sequence"],
                    stored_hash=row["stored_hash"],
                    content_hash=row["content_hash"],
                    source=f"#{sequence} by {actor}: {statement.get('reason', '')}",
                )
            )
    return found


def chain_verify(*, anchors: list[chain.Anchor] | None = None) -> chain.ChainReport:
    return chain.verify(
        chain.iter_chain_rows(AuditEvent.objects.all()),
        anchors=anchors or (),
        reanchored=reanchored_rows(),
    )


def chain_reanchor(
    *,
    actor: AbstractBaseUser,
    sequences: list[int],
    reason: str,
    anchors: list[chain.Anchor] | None = None,
) -> AuditEvent:
    """Acknowledge rows a bug broke (their content no longer hashes to their stored hash,
    e.g. -0.0 stored as 0.0 before the chain hashed the database's form), so verification
    passes them while they stay exactly as they are now. Staff only; refused unless the
    whole chain, held to `anchors` (signed checkpoints), verifies with these rows accepted:
    a missing, reordered or rewritten row is never re-anchored. Records the old head and a
    signature with the checkpoint key in the `audit.chain_reanchored` event, then publishes
    a checkpoint."""
    if not (actor.is_active and actor.is_staff):
        raise PermissionDenied("Only active staff can re-anchor the audit chain.")
    reason = reason.strip()
    if not reason:
        raise ValidationFailed(
            "Say why these rows are a bug's doing, not tampering.", field="reason"
        )
    if not sequences:
        raise ValidationFailed("Name the sequences to re-anchor.", field="sequences")
    with transaction.atomic():
        _lock_chain()
        rows = []
        records = AuditEvent.objects.filter(sequence__in=sequences).values_list(*chain.CHAIN_FIELDS)
        by_sequence = {r[0]: dict(zip(chain.CHAIN_FIELDS, r, strict=True)) for r in records}
        for sequence in sorted(set(sequences)):
            record = by_sequence.get(sequence)
            if record is None:
                raise ValidationFailed(f"There is no event {sequence}.", field="sequences")
            content_hash = chain.recompute(record)
            if content_hash == record["hash"]:
                raise ValidationFailed(
                    f"Event {sequence} verifies as it is; nothing to re-anchor.", field="sequences"
                )
            rows.append(
                {"sequence": sequence, "stored_hash": record["hash"], "content_hash": content_hash}
            )
        proposed = [
            chain.Reanchored(r["sequence"], r["stored_hash"], r["content_hash"], "proposed")
            for r in rows
        ]
        report = chain.verify(
            chain.iter_chain_rows(AuditEvent.objects.all()),
            anchors=anchors or (),
            reanchored=[*reanchored_rows(), *proposed],
        )
        if not report.intact:
            raise ValidationFailed(
                f"Re-anchoring would not make the chain verify: {report.reason}. Only rows "
                "whose content no longer matches their hash, with every link intact, can be "
                "re-anchored; list every such row.",
                field="sequences",
            )
        head_sequence, head_hash = chain_head()
        statement = chain.storable(
            {
                "reason": reason,
                "actor": actor.get_username(),
                "old_head": {"sequence": head_sequence, "hash": head_hash},
                "rows": rows,
            }
        )
        key_id, signature = checkpoints.sign_bytes(_reanchor_message(statement))
        event = audit_log(
            actor=actor,
            action=REANCHOR_ACTION,
            data={**statement, "key_id": key_id, "signature": signature},
        )
        transaction.on_commit(lambda: checkpoint_emit(reason="reanchor"), robust=True)
    return event


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
        source = default_checkpoint_source()
        report = chain_verify(anchors=checkpoint_anchors(source) if source else None)
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
    """Record that someone exported the log (the export itself is a read), and once that
    commits, publish a signed checkpoint of the head: the exported hashes stay checkable
    against it."""
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
    transaction.on_commit(lambda: checkpoint_emit(reason="export"), robust=True)
