import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, InternalError, ProgrammingError, connection, transaction

from apps.audit.models import AuditEvent
from apps.audit.services import audit_log, chain_verify
from tests.audit.conftest import tamper

pytestmark = pytest.mark.django_db


def _verify_fails_at(sequence: int) -> str:
    with pytest.raises(CommandError) as info:
        call_command("audit_verify")
    message = str(info.value)
    assert f"BROKEN at sequence {sequence}:" in message
    return message


def test_intact_chain_verifies(events, capsys):
    call_command("audit_verify")
    assert "audit chain intact: 7 events" in capsys.readouterr().out
    first, second = AuditEvent.objects.order_by("sequence")[:2]
    assert first.prev_hash == "0" * 64
    assert second.prev_hash == first.hash


def test_edited_row_is_detected(events):
    tamper("UPDATE audit_auditevent SET data = %s WHERE sequence = 4", ['{"n": 40}'])
    assert "altered" in _verify_fails_at(4)


def test_edited_actor_is_detected(events):
    tamper("UPDATE audit_auditevent SET actor_label = 'someone' WHERE sequence = 2", [])
    _verify_fails_at(2)


def test_deleted_row_is_detected(events):
    tamper("DELETE FROM audit_auditevent WHERE sequence = 5", [])
    assert "missing" in _verify_fails_at(5)


def test_deleted_tail_is_not_detectable_without_an_anchor(events):
    """Truncating the newest events leaves a valid shorter chain: only a signed
    checkpoint from before gives it away (tests/audit/test_checkpoints.py). This test
    pins down the limit of the chain alone so nobody assumes otherwise."""
    tamper("DELETE FROM audit_auditevent WHERE sequence = 7", [])
    report = chain_verify()
    assert report.intact and report.events_checked == 6


def test_swapped_pair_is_detected(events):
    # Swap the sequence numbers of rows 3 and 6 (through a free number).
    tamper("UPDATE audit_auditevent SET sequence = -3 WHERE sequence = 3", [])
    tamper("UPDATE audit_auditevent SET sequence = 3 WHERE sequence = 6", [])
    tamper("UPDATE audit_auditevent SET sequence = 6 WHERE sequence = -3", [])
    assert "does not follow" in _verify_fails_at(3)


def test_rewritten_row_with_recomputed_hash_breaks_the_next_link(events):
    """An attacker who edits a row and recomputes its own hash still breaks the
    next row's prev_hash link."""
    from apps.audit import chain

    row = AuditEvent.objects.get(sequence=3)
    fields = {
        "sequence": 3,
        "created_at": row.created_at,
        "actor_id": row.actor_id,
        "actor_label": row.actor_label,
        "squad_id": row.squad_id,
        "action": row.action,
        "target_type": row.target_type,
        "target_id": row.target_id,
        "data": {"n": 999},
        "ip": row.ip,
    }
    new_hash = chain.event_hash(row.prev_hash, chain.canonical(**fields))
    tamper(
        "UPDATE audit_auditevent SET data = %s, hash = %s WHERE sequence = 3",
        ['{"n": 999}', new_hash],
    )
    assert "does not follow" in _verify_fails_at(4)


def test_audit_log_requires_a_transaction(transactional_db):
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit_log(actor=None, action="test.outside")


def test_sequence_is_unique(events):
    with pytest.raises(IntegrityError), transaction.atomic():
        AuditEvent.objects.create(sequence=1, action="x", prev_hash="0" * 64, hash="f" * 64)


@pytest.mark.postgres
def test_trigger_rejects_update_and_delete(events):
    for statement in (
        "UPDATE audit_auditevent SET action = 'x' WHERE sequence = 1",
        "DELETE FROM audit_auditevent WHERE sequence = 1",
    ):
        with (
            pytest.raises((InternalError, ProgrammingError), match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    # The ORM is refused the same way.
    with (
        pytest.raises((InternalError, ProgrammingError), match="append-only"),
        transaction.atomic(),
    ):
        AuditEvent.objects.filter(sequence=2).delete()
    assert AuditEvent.objects.count() == 7
    call_command("audit_verify")


@pytest.mark.postgres
def test_trigger_rejects_truncate(events):
    """Row triggers do not fire for TRUNCATE; a statement trigger does (migration 0003).
    The test database runs with it off (tests/conftest.py): on again for this transaction."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_truncate")
    for statement in (
        "TRUNCATE audit_auditevent",
        "TRUNCATE audit_auditevent RESTART IDENTITY CASCADE",
    ):
        with (
            pytest.raises((InternalError, ProgrammingError), match="append-only: TRUNCATE"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    assert AuditEvent.objects.count() == 7
    call_command("audit_verify")
