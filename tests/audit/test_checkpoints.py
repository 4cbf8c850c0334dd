"""Signed checkpoints of the chain head (issue 14, defect 4): someone with the database
owner's rights who rewrites an event and recomputes every later hash, or removes the
tail, is caught by `audit_verify --checkpoints`; forged or unknown-key checkpoints are
refused; rotation keeps old checkpoints verifiable."""

import functools
import http.server
import json
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.audit import checkpoints
from apps.audit.models import AuditEvent, ChainVerification
from apps.audit.services import (
    chain_verification_run,
    chain_verify,
    checkpoint_emit,
    checkpoint_emit_if_due,
)
from tests.audit.conftest import rewrite_from, tamper
from tests.telemetry.conftest import log_lines  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db

K1_PRIVATE, K1_PUBLIC = checkpoints.new_key_entry("k1")
K2_PRIVATE, K2_PUBLIC = checkpoints.new_key_entry("k2")


@pytest.fixture
def sink(settings, tmp_path):
    """Checkpoints go to a fresh file under tmp_path, signed with k1."""
    settings.STUDIO_AUDIT_CHECKPOINT_DIR = str(tmp_path / "checkpoints")
    settings.STUDIO_AUDIT_CHECKPOINT_KEYS = K1_PRIVATE
    settings.STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS = ""
    return tmp_path / "checkpoints" / checkpoints.FILE_NAME


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _verify(source) -> str:
    """audit_verify's failure message (CommandError), or its output when it passes."""
    try:
        call_command("audit_verify", checkpoints=str(source))
    except CommandError as exc:
        return f"FAILED {exc}"
    return "OK"


def test_checkpoint_is_signed_and_published_to_the_file_and_the_log(events, sink, log_lines):  # noqa: F811
    checkpoint = checkpoint_emit(reason="manual")
    head = AuditEvent.objects.order_by("-sequence").first()
    assert (checkpoint.sequence, checkpoint.hash, checkpoint.key_id) == (7, head.hash, "k1")
    (line,) = _lines(sink)
    assert line == checkpoint.as_dict()
    (logged,) = [entry for entry in log_lines() if entry["event"] == checkpoints.LOG_EVENT]
    assert logged["checkpoint"] == checkpoint.as_dict()
    assert checkpoints.check(line, where="test") == checkpoint
    assert _verify(sink) == "OK"


def test_rewrite_with_recomputed_hashes_before_a_checkpoint_is_detected(events, sink):
    checkpoint_emit(reason="manual")
    rewrite_from(3, {"n": 999})
    assert chain_verify().intact  # without an outside anchor the rewrite is invisible
    assert AuditEvent.objects.get(sequence=3).data == {"n": 999}
    message = _verify(sink)
    assert "BROKEN at sequence 7" in message and "rewritten" in message


def test_rewrite_after_the_newest_checkpoint_is_not_covered(events, sink):
    """What a checkpoint cannot do, pinned down: events after it are only chained."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("apps.audit.services.chain_head", lambda: (5, _hash_of(5)))
        checkpoint_emit(reason="manual")
    rewrite_from(6, {"n": 600})
    assert _verify(sink) == "OK"


def _hash_of(sequence: int) -> str:
    return AuditEvent.objects.get(sequence=sequence).hash


def test_truncated_tail_is_detected(events, sink):
    checkpoint_emit(reason="manual")
    tamper("DELETE FROM audit_auditevent WHERE sequence >= 6", [])
    assert chain_verify().intact  # a shorter chain is still a consistent chain
    message = _verify(sink)
    assert "BROKEN at sequence 6" in message and "ends at sequence 5" in message


def test_checkpoints_from_json_log_lines_and_from_a_url(events, sink, tmp_path):
    checkpoint = checkpoint_emit(reason="manual")
    log = tmp_path / "studio.log"
    log.write_text(
        'plain text\n{"event": "request", "status": 200}\n'
        + json.dumps({"event": "audit.checkpoint", "checkpoint": checkpoint.as_dict()})
        + "\n"
    )
    assert _verify(log) == "OK"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(sink.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{sink.name}"
        assert _verify(url) == "OK"
        tamper("DELETE FROM audit_auditevent WHERE sequence = 7", [])
        assert "BROKEN at sequence 7" in _verify(url)
    finally:
        server.shutdown()
        server.server_close()


def test_checkpoint_with_a_bad_signature_is_refused(events, sink):
    checkpoint_emit(reason="manual")
    (line,) = _lines(sink)
    forged = {**line, "hash": _hash_of(6)}  # claims another head, old signature
    sink.write_text(json.dumps(forged) + "\n")
    message = _verify(sink)
    assert "REFUSED" in message and "line 1" in message and "bad signature" in message
    sink.write_text(json.dumps({**line, "signature": "bm90IGEgc2lnbmF0dXJl"}) + "\n")
    assert "bad signature" in _verify(sink)
    sink.write_text(json.dumps({**line, "sequence": "7"}) + "\n")
    assert "malformed" in _verify(sink)


def test_checkpoint_with_an_unknown_key_id_is_refused(events, sink, settings):
    settings.STUDIO_AUDIT_CHECKPOINT_KEYS = K2_PRIVATE  # signed by a key we do not know
    checkpoint_emit(reason="manual")
    settings.STUDIO_AUDIT_CHECKPOINT_KEYS = K1_PRIVATE
    message = _verify(sink)
    assert "REFUSED" in message and "unknown key id 'k2'" in message


def test_rotation_keeps_old_checkpoints_verifiable(events, sink, settings):
    old = checkpoint_emit(reason="manual")
    settings.STUDIO_AUDIT_CHECKPOINT_KEYS = f"{K2_PRIVATE},{K1_PRIVATE}"  # k2 signs now
    new = checkpoint_emit(reason="manual")
    assert (old.key_id, new.key_id) == ("k1", "k2")
    assert _verify(sink) == "OK"
    # k1's private half destroyed, its public half kept for verification.
    settings.STUDIO_AUDIT_CHECKPOINT_KEYS = K2_PRIVATE
    settings.STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS = K1_PUBLIC
    assert _verify(sink) == "OK"
    settings.STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS = ""
    assert "unknown key id 'k1'" in _verify(sink)


def test_a_public_key_that_contradicts_a_signing_key_is_refused(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.STUDIO_AUDIT_CHECKPOINT_KEYS = K1_PRIVATE
    settings.STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS = K2_PUBLIC.replace("k2:", "k1:")
    with pytest.raises(ImproperlyConfigured, match="differs"):
        checkpoints.verifying_keys()
    settings.STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS = ""
    settings.STUDIO_AUDIT_CHECKPOINT_KEYS = "k1:c2hvcnQ="
    with pytest.raises(ImproperlyConfigured, match="entry 1 must be 'id:<base64 of 32 bytes>'"):
        checkpoints.signing_keys()


def test_export_publishes_a_checkpoint_of_the_head(
    squad, api_as, sink, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = api_as("compliance").call("GET", "/api/v1/audit/export?squad=acme")
    assert response.status_code == 200
    (line,) = _lines(sink)
    head = AuditEvent.objects.order_by("-sequence").first()
    assert head.action == "audit.exported"
    assert (line["reason"], line["sequence"], line["hash"]) == ("export", head.sequence, head.hash)


def test_the_sweeper_publishes_one_checkpoint_per_interval(events, sink, settings):
    from apps.core.tasks import sweep_once

    settings.STUDIO_AUDIT_CHECKPOINT_SECONDS = 3600
    sweep_once()
    assert checkpoint_emit_if_due() is None  # not due again within the interval
    (line,) = _lines(sink)
    assert (line["reason"], line["sequence"]) == ("schedule", 7)
    settings.STUDIO_AUDIT_CHECKPOINT_SECONDS = 0
    from django.core.cache import cache

    cache.clear()
    assert checkpoint_emit_if_due() is None  # 0 turns the schedule off


def test_queued_verification_uses_the_configured_checkpoint_file(events, sink):
    checkpoint_emit(reason="manual")
    tamper("DELETE FROM audit_auditevent WHERE sequence = 7", [])
    verification = ChainVerification.objects.create()
    chain_verification_run(verification_id=verification.pk)
    verification.refresh_from_db()
    assert verification.status == ChainVerification.Status.BROKEN
    assert verification.first_broken_sequence == 7 and "removed" in verification.detail


def test_audit_verify_uses_the_configured_file_and_says_when_there_is_none(
    events, sink, capsys, settings
):
    call_command("audit_verify")
    assert "no signed checkpoints given" in capsys.readouterr().out
    checkpoint_emit(reason="manual")
    call_command("audit_verify")
    assert "1 signed checkpoints from" in capsys.readouterr().out
    tamper("DELETE FROM audit_auditevent WHERE sequence = 7", [])
    with pytest.raises(CommandError, match="BROKEN at sequence 7"):
        call_command("audit_verify")
