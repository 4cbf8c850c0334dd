import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.evals import services
from apps.evals.models import EvalRun, TestCase
from tests.evals.conftest import add_case

pytestmark = pytest.mark.django_db
CASES = "/api/v1/squads/acme/prompts/writer/cases"
EVALS = "/api/v1/squads/acme/evals"
CONTAINS = [{"type": "contains", "value": "tides"}]


def test_cases_crud(writer, api_as):
    api = api_as("sme")
    body = {
        "name": "tides",
        "variables": {"topic": "tides"},
        "assertions": CONTAINS,
        "tags": ["smoke"],
    }
    created = api.call("POST", CASES, body)
    assert created.status_code == 201, created.content
    case_id = created.json()["id"]
    assert created.json()["created_by"] == "sme"
    listed = api_as("viewer").call("GET", f"{CASES}?tag=smoke").json()
    assert [c["name"] for c in listed] == ["tides"]
    assert api_as("viewer").call("GET", f"{CASES}?tag=other").json() == []
    patched = api.call("PATCH", f"{CASES}/{case_id}", {"tags": []})
    assert patched.status_code == 200 and patched.json()["tags"] == []
    assert api.call("GET", f"{CASES}/{case_id}").json()["name"] == "tides"
    assert api.call("DELETE", f"{CASES}/{case_id}").status_code == 204
    assert api.call("GET", f"{CASES}/{case_id}").status_code == 404


def test_bad_case_is_422_naming_the_field(writer, api_as):
    body = {
        "name": "x",
        "variables": {"topic": "x"},
        "assertions": [{"type": "regex", "pattern": "("}],
    }
    response = api_as("engineer").call("POST", CASES, body)
    assert response.status_code == 422
    assert response.json()["field"] == "assertions[0].pattern"


def test_import_and_export(writer, api_as):
    api = api_as("engineer")
    good = json.dumps({"name": "a", "variables": {"topic": "x"}, "assertions": CONTAINS})
    bad = json.dumps({"name": "b", "variables": {"topic": "x"}, "assertions": [{"type": "nope"}]})
    refused = api.client.post(
        f"{CASES}/import",
        {"file": SimpleUploadedFile("cases.jsonl", f"{good}\n{bad}\n".encode())},
        headers=api.headers,
    )
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {
            "line": 2,
            "field": "assertions[0].type",
            "message": refused.json()["errors"][0]["message"],
        }
    ]
    assert "unknown type 'nope'" in refused.json()["errors"][0]["message"]
    assert not TestCase.objects.exists()
    imported = api.client.post(
        f"{CASES}/import",
        {"file": SimpleUploadedFile("cases.jsonl", f"{good}\n".encode())},
        headers=api.headers,
    )
    assert imported.json() == {"created": 1, "updated": 0, "unchanged": 0}
    exported = api_as("viewer").call("GET", f"{CASES}/export")
    assert exported.status_code == 200 and exported["Content-Type"] == "application/x-ndjson"
    assert json.loads(exported.content.decode().splitlines()[0])["name"] == "a"


def test_runs(writer, api_as, fake_server):
    add_case(writer.template, "tides", "tides", CONTAINS)
    add_case(writer.template, "moon", "moon", CONTAINS)
    api = api_as("engineer")
    created = api.call("POST", EVALS, {"prompt": "writer", "version": 1})
    assert created.status_code == 201, created.content
    run = created.json()
    assert (run["status"], run["total"], run["target"], run["version"]) == ("queued", 2, "fake", 1)
    assert run["url"] == f"/squads/acme/evals/runs/{run['id']}/"
    by_id = api.call("POST", EVALS, {"version_id": writer.pk, "target": "fake"})
    assert by_id.status_code == 201
    services.eval_run_execute(run_id=run["id"])
    detail = api_as("viewer").call("GET", f"{EVALS}/{run['id']}").json()
    assert detail["status"] == "succeeded" and detail["pass_rate"] == 0.5
    assert {r["name"]: r["passed"] for r in detail["results"]} == {"tides": True, "moon": False}
    moon = next(r for r in detail["results"] if r["name"] == "moon")
    assert moon["assertions"][0]["type"] == "contains" and moon["generation"]
    listed = api.call("GET", f"{EVALS}?prompt=writer").json()
    assert [r["id"] for r in listed] == [by_id.json()["id"], run["id"]]
    cancelled = api.call("POST", f"{EVALS}/{by_id.json()['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert api.call("POST", f"{EVALS}/{run['id']}/cancel").status_code == 409


def test_run_refusals(writer, api_as):
    api = api_as("engineer")
    assert api.call("POST", EVALS, {"prompt": "writer"}).status_code == 422  # no cases
    add_case(writer.template, "tides", "tides", CONTAINS)
    assert api.call("POST", EVALS, {}).json()["field"] == "prompt"
    assert api.call("POST", EVALS, {"prompt": "writer", "version": 9}).status_code == 404
    assert api.call("POST", EVALS, {"version_id": 999999}).status_code == 404
    missing = api.call("POST", EVALS, {"prompt": "writer", "target": "nope"})
    assert missing.status_code == 404 and missing.json()["field"] == "target"
    assert api_as("sme").call("POST", EVALS, {"prompt": "writer"}).status_code == 403
    assert api_as("outsider").call("POST", EVALS, {"prompt": "writer"}).status_code == 404
    assert not EvalRun.objects.exists()


def test_compare(writer, api_as):
    add_case(writer.template, "tides", "tides", CONTAINS)
    api = api_as("engineer")
    base = api.call("POST", EVALS, {"prompt": "writer"}).json()["id"]
    services.eval_run_execute(run_id=base)
    TestCase.objects.update(assertions=[{"type": "contains", "value": "nope"}])
    head = api.call("POST", EVALS, {"prompt": "writer"}).json()["id"]
    services.eval_run_execute(run_id=head)
    compared = api_as("viewer").call("GET", f"{EVALS}/compare?base={base}&head={head}")
    assert compared.status_code == 200, compared.content
    body = compared.json()
    assert [r["name"] for r in body["regressions"]] == ["tides"]
    assert body["regressions"][0]["failing"][0]["type"] == "contains"
    assert body["fixes"] == [] and body["pass_rate_delta"] == -1.0
    assert api.call("GET", f"{EVALS}/compare?base={base}&head=999999").status_code == 404
