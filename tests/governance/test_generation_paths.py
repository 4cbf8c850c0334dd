"""Block, redact and flag through each generation path: the API's generate, the
playground and batch jobs (the eval path does not exist yet; it will call the same
pipeline.execute_rows and pipeline.prepare and get the same checks)."""

import hashlib
import json
from pathlib import Path

import pytest
from django.test import Client

from apps.generation import services
from apps.generation.models import Generation
from apps.governance import services as governance
from tests.factories import PASSWORD, UserFactory
from tests.generation.conftest import remote_target, text_prompt
from tests.generation.fake_openai import FakeOpenAI, scripted

pytestmark = pytest.mark.django_db
GENERATE = "/api/v1/squads/acme/prompts/writer/generate"
EMAIL = "mail ada@example.com and ada@example.com"
PHONE = "ring +44 20 7946 0958"
SSN = "ssn 123-45-6789"


def _sent(server) -> list[str]:
    return [r["messages"][-1]["content"] for r in server.requests]


@pytest.fixture
def writer(squad, fake_server, policy):
    remote_target(squad, fake_server.url)
    return text_prompt(squad)


def test_api_redacts_before_storing_and_sending(writer, fake_server, api_as, policy):
    response = api_as("engineer").call("POST", GENERATE, {"variables": {"topic": EMAIL}})
    assert response.status_code == 202, response.content
    g = Generation.objects.get()
    assert g.variables == {"topic": "mail [EMAIL_1] and [EMAIL_1]"}  # never the original
    assert g.policy_version == policy
    assert [(f["where"], f["type"], f["action"]) for f in g.findings] == [
        ("variables.topic", "email", "redact"),
        ("variables.topic", "email", "redact"),
    ]
    assert g.findings[0]["start"] == 5 and g.findings[0]["end"] == 20
    g = services.generation_run(generation_id=g.pk)
    assert g.status == "ok"
    assert _sent(fake_server) == ["Write about mail [EMAIL_1] and [EMAIL_1]."]
    assert "ada@example.com" not in json.dumps(response.json())


def test_api_flags_and_sends_unchanged(writer, fake_server, api_as):
    response = api_as("engineer").call("POST", GENERATE, {"variables": {"topic": PHONE}})
    g = services.generation_run(generation_id=response.json()["id"])
    assert g.status == "ok" and g.variables == {"topic": PHONE}
    # Once in the input; once more in the output, which the fake model echoes.
    assert [(f["stage"], f["type"], f["action"]) for f in g.findings] == [
        ("input", "phone", "flag"),
        ("output", "phone", "flag"),
    ]
    assert _sent(fake_server) == [f"Write about {PHONE}."]


def test_api_blocks_without_calling_the_model(
    writer, fake_server, api_as, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api_as("engineer").call("POST", GENERATE, {"variables": {"topic": SSN}})
    assert response.status_code == 200 and callbacks == []  # nothing queued
    body = response.json()
    assert body["status"] == "blocked"
    assert body["findings"][0]["type"] == "ssn" and body["findings"][0]["action"] == "block"
    assert "US Social Security number (block)" in body["errors"][0]["message"]
    assert "policy v1" in body["errors"][0]["message"]
    assert fake_server.requests == []
    assert Generation.objects.get().provenance["status"] == "blocked"


def test_blocked_terms_and_topics_are_whole_word_and_case_rules(squad, writer, api_as):
    response = api_as("engineer").call(
        "POST", GENERATE, {"variables": {"topic": "the project falcon launch"}}
    )
    assert response.json()["status"] == "blocked"  # case-insensitive by default
    governance.policy_update(
        actor=UserFactory(username="owner"),
        squad=squad,
        rules={"blocked_terms": ["falcon"], "case_sensitive": True, "allowed_topics": ["tides"]},
    )
    ok = api_as("engineer").call("POST", GENERATE, {"variables": {"topic": "Falcons and tides"}})
    assert ok.json()["status"] == "queued"  # "Falcons": another word, another case
    off = api_as("engineer").call("POST", GENERATE, {"variables": {"topic": "football"}})
    assert off.json()["findings"][0]["rule"] == "topic" and off.json()["status"] == "blocked"


def test_playground_redacts_flags_and_blocks(writer, fake_server):
    client = Client()
    assert client.login(username="engineer", password=PASSWORD)
    url = "/squads/acme/prompts/writer/run"
    for topic in (EMAIL, PHONE, SSN):
        response = client.post(
            url,
            {"version": "1", "target": "fake", "variables": json.dumps({"topic": topic})},
            headers={"HX-Request": "true"},
        )
        assert response.status_code == 200
    redacted, flagged, blocked = Generation.objects.order_by("id")
    assert redacted.source == "playground" and redacted.variables["topic"].count("[EMAIL_1]") == 2
    assert flagged.findings[0]["action"] == "flag"
    assert blocked.status == "blocked" and "blocked" in response.content.decode()
    for g in (redacted, flagged):
        services.generation_run(generation_id=g.pk)
    assert _sent(fake_server) == [
        "Write about mail [EMAIL_1] and [EMAIL_1].",
        f"Write about {PHONE}.",
    ]


def test_batch_redacts_flags_and_blocks_per_row(squad, writer, fake_server):
    rows = [{"topic": EMAIL}, {"topic": PHONE}, {"topic": SSN}, {"topic": "tides"}]
    job = services.batch_job_create(
        actor=UserFactory(username="engineer"),
        version=writer,
        content="".join(json.dumps(r) + "\n" for r in rows).encode(),
        filename="rows.jsonl",
        batch_size=2,
    )
    services.batch_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.rows_done == 4
    g = {x.row_index: x for x in job.generations.select_related("policy_version")}
    assert g[0].variables == {"topic": "mail [EMAIL_1] and [EMAIL_1]"}
    assert [f["action"] for f in g[0].findings] == ["redact", "redact"]
    assert g[1].status == "ok" and g[1].findings[0]["action"] == "flag"
    assert g[2].status == "blocked" and g[2].output_text == "" and g[2].findings[0]["type"] == "ssn"
    assert g[3].status == "ok" and g[3].findings == []
    assert all(x.policy_version_id == g[0].policy_version_id for x in g.values())
    assert all(x.provenance_signature for x in g.values())
    assert sorted(_sent(fake_server)) == sorted(
        ["Write about mail [EMAIL_1] and [EMAIL_1].", f"Write about {PHONE}.", "Write about tides."]
    )


def test_a_batch_upload_keeps_only_redacted_values_on_disk(squad, writer, fake_server):
    rows = [{"topic": EMAIL}, {"topic": PHONE}]
    job = services.batch_job_create(
        actor=UserFactory(username="engineer"),
        version=writer,
        content="".join(json.dumps(r) + "\n" for r in rows).encode(),
        filename="rows.jsonl",
    )
    on_disk = Path(job.rows_path).read_text(encoding="utf-8")
    assert "ada@example.com" not in on_disk and "[EMAIL_1]" in on_disk
    assert "+44 20 7946 0958" in on_disk  # flagged, not redacted: sent as it is
    # The sha256 is still that of the rows as uploaded (what the audit event names).
    uploaded = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    assert job.rows_sha256 == hashlib.sha256(uploaded).hexdigest()
    services.batch_job_run(job_id=job.pk)
    g = {x.row_index: x for x in job.generations.all()}
    assert [f["action"] for f in g[0].findings] == ["redact", "redact"]
    assert g[1].findings and {f["action"] for f in g[1].findings} == {"flag"}


def test_a_rows_file_from_before_upload_redaction_still_runs(squad, writer, fake_server):
    job = services.batch_job_create(
        actor=UserFactory(username="engineer"),
        version=writer,
        content=(json.dumps({"topic": "tides"}) + "\n").encode(),
        filename="rows.jsonl",
    )
    with open(job.rows_path, "w", encoding="utf-8") as handle:  # the old layout
        handle.write(json.dumps({"topic": EMAIL}) + "\n")
    services.batch_job_run(job_id=job.pk)
    generation = job.generations.get()
    assert generation.variables == {"topic": "mail [EMAIL_1] and [EMAIL_1]"}
    assert _sent(fake_server) == ["Write about mail [EMAIL_1] and [EMAIL_1]."]


def test_pii_in_the_output_is_redacted_and_blocked_terms_block_it(squad, policy):
    version = None
    with FakeOpenAI(scripted("Reach me at bob@example.org.", "About Project Falcon.")) as server:
        remote_target(squad, server.url)
        version = text_prompt(squad)
        first = services.generation_request(
            actor=UserFactory(username="engineer"), version=version, variables={"topic": "x"}
        )
        first = services.generation_run(generation_id=first.pk)
        second = services.generation_request(
            actor=UserFactory(username="engineer"), version=version, variables={"topic": "y"}
        )
        second = services.generation_run(generation_id=second.pk)
    assert first.status == "ok" and first.output_text == "Reach me at [EMAIL_1]."
    assert first.findings == [
        {
            "stage": "output",
            "rule": "pii",
            "type": "email",
            "where": "output",
            "start": 12,
            "end": 27,
            "action": "redact",
        }
    ]
    assert second.status == "blocked" and second.output_text == ""
    assert second.findings[0]["rule"] == "blocked_term"


def test_limits_block_long_input_and_cap_output_tokens(squad, writer, fake_server, api_as):
    governance.policy_update(
        actor=UserFactory(username="owner"),
        squad=squad,
        rules={"max_input_chars": 30, "max_output_tokens": 8},
    )
    long = api_as("engineer").call("POST", GENERATE, {"variables": {"topic": "x" * 40}})
    assert long.json()["status"] == "blocked"
    assert long.json()["findings"][0]["type"] == "max_input_chars"
    short = api_as("engineer").call("POST", GENERATE, {"variables": {"topic": "tides"}})
    g = services.generation_run(generation_id=short.json()["id"])
    assert fake_server.requests[0]["max_tokens"] == 8  # the prompt asks for 16
    assert g.provenance["parameters"]["max_new_tokens"] == 8


def test_json_prompt_without_schema_is_blocked_when_required(squad, fake_server):
    governance.policy_update(
        actor=UserFactory(username="owner"), squad=squad, rules={"output_require_schema": True}
    )
    remote_target(squad, fake_server.url)
    version = text_prompt(squad, slug="loose", output_format="json", output_schema={})
    g = services.generation_request(
        actor=UserFactory(username="engineer"), version=version, variables={"topic": "x"}
    )
    assert g.status == "blocked" and g.findings[0]["type"] == "schema_required"
