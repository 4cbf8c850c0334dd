"""Re-anchoring rows a bug broke (issue 14, defect 3's aftermath): staff only, only rows
whose content no longer matches their hash with every link intact, recorded with the old
head and a signature the database cannot forge, then checkpointed."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from apps.audit import checkpoints
from apps.audit.models import AuditEvent
from apps.audit.services import REANCHOR_ACTION, audit_log, chain_reanchor, chain_verify
from apps.core.exceptions import PermissionDenied, ValidationFailed
from tests.audit.conftest import rewrite_from, tamper
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _bug(sequence: int) -> None:
    """What the -0.0 bug did: the stored data differs from what was hashed, nothing else."""
    tamper(
        "UPDATE audit_auditevent SET data = %s WHERE sequence = %s",
        ['{"n": 0.0, "text": "héllo ✓"}', sequence],
    )


@pytest.fixture
def staff(db):
    return UserFactory(username="platform", is_staff=True)


@pytest.fixture
def sink(settings, tmp_path):
    settings.STUDIO_AUDIT_CHECKPOINT_DIR = str(tmp_path)
    return tmp_path / checkpoints.FILE_NAME


def test_reanchored_row_verifies_and_the_act_is_recorded_and_checkpointed(
    events, staff, sink, capsys, django_capture_on_commit_callbacks
):
    _bug(4)
    assert chain_verify().first_broken_sequence == 4
    head = AuditEvent.objects.order_by("-sequence").first()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("audit_reanchor", "4", staff="platform", reason="issue 14: -0.0 in jsonb")
    assert "re-anchored 4 as event 8" in capsys.readouterr().out
    event = AuditEvent.objects.get(sequence=8)
    assert event.action == REANCHOR_ACTION and event.actor_label == "platform"
    assert event.data["old_head"] == {"sequence": 7, "hash": head.hash}
    assert event.data["rows"][0]["stored_hash"] == AuditEvent.objects.get(sequence=4).hash
    (line,) = [json.loads(x) for x in sink.read_text().splitlines()]
    assert (line["reason"], line["sequence"], line["hash"]) == ("reanchor", 8, event.hash)
    report = chain_verify()
    assert report.intact and report.reanchored == (4,)
    assert "sequence 4 re-anchored (#8 by platform: issue 14" in report.reason
    call_command("audit_verify", checkpoints=str(sink))
    # Touching the row again breaks it again.
    tamper("UPDATE audit_auditevent SET data = %s WHERE sequence = 4", ['{"n": 1}'])
    assert chain_verify().first_broken_sequence == 4


def test_only_active_staff_with_a_reason(events, staff):
    _bug(4)
    with pytest.raises(PermissionDenied):
        chain_reanchor(actor=UserFactory(username="nobody"), sequences=[4], reason="bug")
    with pytest.raises(ValidationFailed) as info:
        chain_reanchor(actor=staff, sequences=[4], reason="  ")
    assert info.value.field == "reason"
    with pytest.raises(CommandError, match="No user named"):
        call_command("audit_reanchor", "4", staff="ghost", reason="bug")
    assert AuditEvent.objects.count() == 7


def test_never_for_a_row_that_verifies_a_deleted_row_or_a_partial_list(events, staff):
    with pytest.raises(ValidationFailed, match="verifies as it is"):
        chain_reanchor(actor=staff, sequences=[3], reason="bug")
    _bug(2)
    _bug(5)
    with pytest.raises(ValidationFailed, match="sequence 5 was altered"):
        chain_reanchor(actor=staff, sequences=[2], reason="bug")
    tamper("DELETE FROM audit_auditevent WHERE sequence = 6", [])
    with pytest.raises(ValidationFailed, match="sequence 6 is missing"):
        chain_reanchor(actor=staff, sequences=[2, 5], reason="bug")
    with pytest.raises(ValidationFailed, match="no event 6"):
        chain_reanchor(actor=staff, sequences=[6], reason="bug")
    assert not AuditEvent.objects.filter(action=REANCHOR_ACTION).exists()


def test_never_past_a_signed_checkpoint(events, staff, sink):
    """A rewrite with recomputed hashes that a checkpoint gives away cannot be laundered
    by re-anchoring a row of it."""
    from apps.audit.services import checkpoint_anchors, checkpoint_emit

    checkpoint_emit(reason="manual")
    rewrite_from(3, {"n": 999})
    _bug(5)
    anchors = checkpoint_anchors(str(sink))
    assert chain_reanchor(actor=staff, sequences=[5], reason="bug").data["rows"]  # no anchors
    with pytest.raises(ValidationFailed, match="signed checkpoint"):
        chain_reanchor(actor=staff, sequences=[5], reason="bug", anchors=anchors)


def test_a_reanchoring_event_the_database_forged_is_not_honoured(events, staff, settings):
    """Someone who can only write the database appends a re-anchoring without the key."""
    _bug(4)
    real = chain_reanchor(actor=staff, sequences=[4], reason="bug")
    forged = {**real.data, "rows": [{**real.data["rows"][0], "sequence": 5}]}
    _bug(5)
    with transaction.atomic():
        audit_log(actor=staff, action=REANCHOR_ACTION, data=forged)
    report = chain_verify()
    assert report.first_broken_sequence == 5
    settings.STUDIO_AUDIT_CHECKPOINT_KEYS = checkpoints.new_key_entry("other")[0]
    assert chain_verify().first_broken_sequence == 4  # unknown key: not honoured either
