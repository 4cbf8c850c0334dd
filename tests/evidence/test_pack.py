"""The evidence pack of a version that went through the whole flow: every part present
with the right values, manifest hashes that match, a chain that verifies — and one that
does not once an audit row is edited behind the application's back."""

import hashlib
import io
import json
import zipfile

import pytest
from django.db import connection

from apps.audit.models import AuditEvent
from apps.core.exceptions import NotFound, PermissionDenied
from apps.evidence import services
from apps.evidence.collect import previous_protected
from apps.evidence.selectors import evidence_version_get_for_user
from apps.generation.models import Generation
from apps.prompts import services as prompts
from tests.factories import UserFactory
from tests.generation.conftest import TEXT_SCHEMA

pytestmark = pytest.mark.django_db


def _open(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _pack(version, username: str = "compliance") -> tuple[str, bytes, dict]:
    filename, content = services.evidence_pack_build(
        actor=UserFactory(username=username), version=version
    )
    files = _open(content)
    return filename, content, json.loads(files["evidence.json"])


def test_pack_files_and_manifest(flow):
    filename, content, _ = _pack(flow.v2)
    assert filename.startswith("evidence-acme-writer-v2-") and filename.endswith(".zip")
    files = _open(content)
    assert set(files) == {"evidence.json", "evidence.html", "manifest.json"}
    manifest = json.loads(files["manifest.json"])
    assert manifest["algorithm"] == "sha256" and manifest["schema_version"] == 1
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {"evidence.json", "evidence.html"}
    for name, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest()
        assert entry["bytes"] == len(files[name])


def test_export_is_audited_with_the_archive_hash(flow):
    before = AuditEvent.objects.count()
    filename, content, _ = _pack(flow.v2)
    event = AuditEvent.objects.get(sequence=before + 1)
    assert event.action == "evidence.exported"
    assert event.actor_label == "compliance"
    assert (event.target_type, event.target_id) == ("prompts.promptversion", str(flow.v2.pk))
    assert event.data["sha256"] == hashlib.sha256(content).hexdigest()
    assert event.data["filename"] == filename
    assert event.data["chain"] == "ok"


def test_version_and_diff(flow):
    _, _, doc = _pack(flow.v2)
    assert doc["schema"] == "studio.evidence" and doc["schema_version"] == 1
    assert doc["generated_by"] == "compliance"
    v = doc["version"]
    assert v["number"] == 2 and v["author"] == "engineer" and v["parent"] == 1
    assert v["commit_message"] == "Shorter answers"
    assert v["content_hash"] == flow.v2.content_hash and v["content_hash_ok"] is True
    assert v["content"]["messages"] == [
        {"role": "user", "content": "Describe {{ topic }} briefly."}
    ]
    assert v["content"]["input_schema"] == TEXT_SCHEMA
    assert v["content"]["model_settings"]["max_new_tokens"] == 32
    assert v["labels"] == ["production"]

    diff = doc["diff"]
    assert diff["base"]["number"] == 1
    assert diff["base"]["content_hash"] == flow.v1.content_hash
    assert "label history" in diff["basis"]
    assert diff["diff"]["from_version"] == 1 and diff["diff"]["to_version"] == 2
    rows = diff["diff"]["messages"][0]["rows"]
    assert rows == [
        {
            "kind": "changed",
            "left_no": 1,
            "left": "Write about {{ topic }}.",
            "right_no": 1,
            "right": "Describe {{ topic }} briefly.",
        }
    ]
    assert {"key": "model.max_new_tokens", "old": 16, "new": 32} in diff["diff"]["config"]
    assert diff["diff"]["breaking"] is False


def test_reviews_with_every_decision(flow):
    _, _, doc = _pack(flow.v2)
    [review] = doc["reviews"]
    assert review["id"] == flow.review.pk and review["state"] == "approved"
    assert review["opened_by"] == "engineer" and review["note"] == "Please check the wording."
    assert review["policy"]["required_approvals"] == {"sme": 1, "compliance": 1}
    assert review["missing"] == []
    decisions = [
        (d["reviewer"], d["roles"], d["verdict"], d["comment"], d["is_current"], d["counted_as"])
        for d in review["decisions"]
    ]
    assert decisions == [
        ("sme", ["sme"], "approve", "first look", False, None),
        ("sme", ["sme"], "approve", "reads well", True, "sme"),
        ("compliance", ["compliance"], "approve", "no PII in the template", True, "compliance"),
    ]
    assert all(d["decided_at"] for d in review["decisions"])


def test_eval_runs_with_regressions_against_the_previous_run(flow):
    _, _, doc = _pack(flow.v2)
    assert doc["evals"]["available"] is True
    [run] = doc["evals"]["runs"]
    assert run["id"] == flow.run_v2.pk and run["target"] == "fake"
    assert run["status"] == "succeeded"
    assert (run["total"], run["passed"], run["failed"], run["pass_rate"]) == (2, 1, 1, 0.5)
    assert run["finished_at"]
    compared = run["compared_with"]
    assert compared["run"] == flow.run_v1.pk and compared["version"] == 1
    assert compared["pass_rate"] == 1.0 and compared["pass_rate_delta"] == -0.5
    assert [r["case"] for r in compared["regressions"]] == ["says write"]
    assert compared["fixes"] == []


def test_governance_policy_and_findings(flow):
    _, _, doc = _pack(flow.v2)
    gov = doc["governance"]
    assert gov["policy_in_force"]["number"] == 1
    assert gov["policy_in_force"]["rules"]["pii"]["email"] == "redact"
    assert gov["policy_in_force"]["created_by"] == "compliance"
    # Three API generations and two eval generations, all under policy v1.
    assert [(p["number"], p["generations"]) for p in gov["policies_of_generations"]] == [(1, 5)]
    findings = gov["findings"]
    assert findings["blocked_generations"] == 1
    assert findings["generations_with_findings"] == 2
    kinds = {
        (f["stage"], f["rule"], f["type"], f["action"]): f["count"] for f in findings["by_kind"]
    }
    assert kinds[("input", "pii", "email", "redact")] == 1
    assert kinds[("input", "pii", "ssn", "block")] == 1
    assert findings["total"] == sum(kinds.values())


def test_generation_statistics(flow):
    _, _, doc = _pack(flow.v2)
    stats = doc["generations"]
    rows = Generation.objects.filter(prompt_version=flow.v2)
    assert stats["count"] == 5
    assert stats["by_status"] == {"blocked": 1, "ok": 4}
    assert stats["by_source"] == {"api": 3, "eval": 2}
    assert stats["input_tokens"] == sum(g.input_tokens for g in rows) > 0
    assert stats["output_tokens"] == sum(g.output_tokens for g in rows) > 0
    assert stats["cost"] == str(sum(g.cost for g in rows))
    latencies = sorted(g.latency_ms for g in rows if g.status == "ok")
    assert stats["latency_ms"]["n"] == 4
    assert stats["latency_ms"]["p50"] == latencies[1]  # nearest rank: ceil(0.5 × 4) = 2nd
    assert stats["latency_ms"]["p95"] == latencies[3]
    assert stats["first_at"] and stats["last_at"] and stats["first_at"] <= stats["last_at"]


def test_label_history(flow):
    _, _, doc = _pack(flow.v2)
    assert [
        (m["label"], m["protected"], m["from_version"], m["to_version"], m["actor"], m["note"])
        for m in doc["labels"]
    ] == [("production", True, 1, 2, "owner", "release 2")]
    _, _, doc1 = _pack(flow.v1)
    assert [(m["from_version"], m["to_version"], m["direction"]) for m in doc1["labels"]] == [
        (None, 1, "onto"),
        (1, 2, "off"),
    ]


def test_audit_events_about_the_version_with_their_hashes(flow):
    squad_last = AuditEvent.objects.filter(squad_id=flow.template.squad_id).latest("sequence")
    _, _, doc = _pack(flow.v2)
    events = doc["audit"]["events"]
    actions = [e["action"] for e in events]
    assert actions == [
        "prompt.version_created",
        "review.requested",
        "review.decided",
        "review.decided",
        "review.decided",
        "eval.run_started",
        "eval.run_finished",
        "prompt.label_moved",
    ]
    stored = {
        e.sequence: e
        for e in AuditEvent.objects.filter(sequence__in=[x["sequence"] for x in events])
    }
    for e in events:
        assert e["hash"] == stored[e["sequence"]].hash
        assert e["prev_hash"] == stored[e["sequence"]].prev_hash
        assert e["hash_ok"] and e["link_ok"]
    # The v1 label move (onto v1) is not about v2; the v1 → v2 move is.
    [move] = [e for e in events if e["action"] == "prompt.label_moved"]
    assert (move["data"]["from"], move["data"]["to"]) == (1, 2)
    check = doc["audit"]["verification"]
    assert check["status"] == "ok" and check["first_broken_sequence"] is None
    assert check["to_sequence"] == squad_last.sequence
    assert check["events_checked"] == check["to_sequence"]


def _tamper(sql: str, params: list) -> None:
    """Edit rows behind the application's back (on PostgreSQL with the append-only
    trigger off for the transaction, as tests/audit/test_chain.py does)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = origin")


def test_tampered_audit_row_reports_the_chain_broken(flow):
    requested = AuditEvent.objects.get(action="review.requested", target_id=str(flow.review.pk))
    _tamper(
        "UPDATE audit_auditevent SET data = %s WHERE sequence = %s",
        ['{"note": "nothing to see"}', requested.sequence],
    )
    _, content, doc = _pack(flow.v2)
    check = doc["audit"]["verification"]
    assert check["status"] == "broken"
    assert check["first_broken_sequence"] == requested.sequence
    assert "altered" in check["reason"]
    [listed] = [e for e in doc["audit"]["events"] if e["sequence"] == requested.sequence]
    assert listed["hash_ok"] is False and listed["link_ok"] is True
    html = _open(content)["evidence.html"].decode()
    assert f"broken at sequence {requested.sequence}" in html
    exported = AuditEvent.objects.filter(action="evidence.exported").latest("sequence")
    assert exported.data["chain"] == "broken"


def test_tampered_row_of_another_squad_breaks_the_walk(flow):
    """An edit anywhere before the squad's latest event breaks the walk, even in a row
    that is not listed in the pack."""
    squad_id = flow.template.squad_id
    other = AuditEvent.objects.exclude(squad_id=squad_id).order_by("sequence").first()
    if other is None:
        other = AuditEvent.objects.filter(action="squad.member_added").order_by("sequence").first()
    _tamper(
        "UPDATE audit_auditevent SET actor_label = %s WHERE sequence = %s",
        ["mallory", other.sequence],
    )
    _, _, doc = _pack(flow.v2)
    check = doc["audit"]["verification"]
    assert check["status"] == "broken" and check["first_broken_sequence"] == other.sequence
    assert check["listed_events_ok"] is True


def test_html_is_self_contained_and_printable(flow):
    _, content, doc = _pack(flow.v2)
    html = _open(content)["evidence.html"].decode()
    assert "@media print" in html
    for external in ("<script", "<link", "src=", "http://", "https://", "url("):
        assert external not in html, external
    assert flow.v2.content_hash in html
    assert "Describe {{ topic }} briefly." in html
    assert "reads well" in html and "no PII in the template" in html
    assert 'id="chain-status">ok<' in html
    for event in doc["audit"]["events"]:
        assert event["hash"] in html


def test_previous_protected_version_rules(flow):
    engineer = UserFactory(username="engineer")
    v3 = prompts.prompt_version_create(
        actor=engineer,
        template=flow.template,
        messages=[{"role": "user", "content": "Explain {{ topic }}."}],
        input_schema=TEXT_SCHEMA,
        commit_message="v3",
    )
    base, basis = previous_protected(v3)
    assert base == flow.v2 and "last protected version" in basis
    base, basis = previous_protected(flow.v1)
    assert base is None and "first version" in basis


def test_previous_version_number_without_any_protected_label(squad):
    from tests.prompts.factories import make_prompt
    from tests.reviews.factories import new_version

    template = make_prompt(squad, UserFactory(username="engineer"))
    v2 = new_version(template, 2)
    base, basis = previous_protected(v2)
    assert base.number == 1 and "previous number" in basis


@pytest.mark.parametrize("username", ["engineer", "sme", "viewer"])
def test_members_without_the_permission_are_refused(flow, username):
    with pytest.raises(PermissionDenied):
        services.evidence_pack_build(actor=UserFactory(username=username), version=flow.v2)
    with pytest.raises(PermissionDenied):
        evidence_version_get_for_user(
            user=UserFactory(username=username), squad_slug="acme", slug="writer", number=2
        )


def test_outsiders_see_nothing(flow):
    with pytest.raises(NotFound):
        evidence_version_get_for_user(
            user=UserFactory(username="outsider"), squad_slug="acme", slug="writer", number=2
        )
    with pytest.raises(NotFound):
        services.evidence_pack_build(actor=UserFactory(username="outsider"), version=flow.v2)


def test_owner_may_export(flow):
    _, _, doc = _pack(flow.v2, "owner")
    assert doc["generated_by"] == "owner"


def test_queries_do_not_grow_with_generations_or_events(flow):
    from django.db import connection as conn
    from django.test.utils import CaptureQueriesContext

    compliance = UserFactory(username="compliance")

    def count() -> int:
        with CaptureQueriesContext(conn) as queries:
            services.evidence_pack_build(actor=compliance, version=flow.v2)
        return len(queries)

    count()  # warm the permission cache
    before = count()
    sample = Generation.objects.filter(prompt_version=flow.v2).first()
    for _ in range(20):
        sample.pk = None
        sample.save()
    # Each export above is one more event about the version.
    assert count() == before
