"""JSON log lines: request id, user, squad, business context, prompt/version/target,
one access line per request; the context stored on generations; Celery task ids."""

import uuid

import pytest
import structlog
from celery.signals import task_prerun
from django.test import Client

from apps.generation import services
from apps.generation.models import Generation
from apps.generation.tasks import run_batch_job, run_generation
from apps.telemetry.worker import task_ids
from tests.factories import UserFactory
from tests.generation.conftest import remote_target, text_prompt

pytestmark = pytest.mark.django_db
CONTEXT = "use_case=contract_review; customer_tier=enterprise"


def access_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line.get("logger") == "studio.access"]


def test_one_json_access_line_per_request_with_who_and_where(squad, log_lines):
    client = Client()
    client.force_login(UserFactory(username="engineer"))
    response = client.get("/squads/acme/prompts/", headers={"X-Studio-Context": CONTEXT})
    assert response.status_code == 200
    (line,) = access_lines(log_lines())
    assert line["event"] == "request" and line["level"] == "info"
    assert line["method"] == "GET" and line["status"] == 200
    assert line["route"] == "/squads/<slug:squad>/prompts/"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["user"] == "engineer" and line["squad"] == "acme"
    assert line["context"] == {"use_case": "contract_review", "customer_tier": "enterprise"}
    assert line["request_id"] == response["X-Request-ID"]
    uuid.UUID(line["request_id"])  # a fresh uuid4 when the caller sent none
    assert line["timestamp"].endswith("Z")


def test_a_well_formed_request_id_is_kept_and_echoed_a_bad_one_replaced(log_lines):
    kept = Client().get("/healthz", headers={"X-Request-ID": "trace-4bf92f3577b34da6"})
    assert kept["X-Request-ID"] == "trace-4bf92f3577b34da6"
    replaced = Client().get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
    assert replaced["X-Request-ID"] != "bad id\nwith newline"
    uuid.UUID(replaced["X-Request-ID"])
    ids = [line["request_id"] for line in access_lines(log_lines())]
    assert ids == ["trace-4bf92f3577b34da6", replaced["X-Request-ID"]]


def test_bindings_do_not_leak_into_the_next_request(squad, log_lines):
    client = Client()
    client.force_login(UserFactory(username="owner"))
    client.get("/squads/acme/prompts/", headers={"X-Studio-Context": "a=1"})
    Client().get("/healthz")
    first, second = access_lines(log_lines())
    assert first["squad"] == "acme" and first["context"] == {"a": "1"}
    assert "squad" not in second and "context" not in second and "user" not in second
    assert second["request_id"] != first["request_id"]


def test_standard_library_lines_carry_the_request_bindings(squad, log_lines):
    """Django's own logger (here the 404 warning) goes through the same renderer."""
    client = Client()
    client.force_login(UserFactory(username="owner"))
    client.get("/squads/acme/prompts/no-such-prompt/", headers={"X-Request-ID": "req-42"})
    warnings = [line for line in log_lines() if line.get("logger") == "django.request"]
    assert warnings and warnings[0]["level"] == "warning"
    assert warnings[0]["request_id"] == "req-42" and warnings[0]["squad"] == "acme"


def test_api_generation_logs_prompt_version_target_and_stores_the_context(
    squad, fake_server, api_as, log_lines, django_capture_on_commit_callbacks
):
    remote_target(squad, fake_server.url)
    text_prompt(squad)
    api = api_as("engineer")
    api.headers["X-Studio-Context"] = CONTEXT
    with django_capture_on_commit_callbacks():
        response = api.call(
            "POST", "/api/v1/squads/acme/prompts/writer/generate", {"variables": {"topic": "x"}}
        )
    assert response.status_code == 202, response.content
    generation = Generation.objects.get(pk=response.json()["id"])
    assert generation.context == {"use_case": "contract_review", "customer_tier": "enterprise"}
    (line,) = access_lines(log_lines())
    assert line["user"] == "engineer"  # the bearer token's user, bound inside the API
    assert (line["prompt"], line["version"], line["target"]) == ("writer", 1, "fake")
    assert line["route"] == "/api/v1/squads/<squad>/prompts/<slug>/generate"
    assert line["status"] == 202


def test_worker_side_generation_logs_its_outcome_with_the_bindings(
    squad, fake_server, log_lines, django_capture_on_commit_callbacks
):
    remote_target(squad, fake_server.url)
    with django_capture_on_commit_callbacks():
        generation = services.generation_request(
            actor=UserFactory(username="engineer"),
            version=text_prompt(squad),
            variables={"topic": "tides"},
        )
    structlog.contextvars.clear_contextvars()
    task_prerun.send(
        sender=run_generation,
        task_id="task-1",
        task=run_generation,
        args=(generation.pk,),
        kwargs={},
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.generation_run(generation_id=generation.pk)
    (line,) = [line for line in log_lines() if line["event"] == "generation finished"]
    assert line["task_id"] == "task-1" and line["task"] == "generation.run"
    assert line["generation_id"] == generation.pk
    assert (line["prompt"], line["version"], line["target"]) == ("writer", 1, "fake")
    assert line["status"] == "ok" and line["output_tokens"] == 4


def test_runtime_fetch_binds_the_prompt_and_label(squad, api_as, log_lines):
    text_prompt(squad, target="local")
    assert api_as("owner").call("GET", "/api/v1/squads/acme/prompts/writer?version=1").status_code
    (line,) = access_lines(log_lines())
    assert line["prompt"] == "writer" and line["version"] == 1 and line["squad"] == "acme"
    assert line["user"] == "owner"


def test_playground_generation_stores_the_context(squad, fake_server):
    remote_target(squad, fake_server.url)
    text_prompt(squad)
    client = Client()
    client.force_login(UserFactory(username="engineer"))
    response = client.post(
        "/squads/acme/prompts/writer/run",
        {"version": "1", "target": "", "variables": '{"topic": "tides"}'},
        headers={"X-Studio-Context": "use_case=demo"},
    )
    assert response.status_code == 200
    generation = Generation.objects.get()
    assert generation.source == "playground" and generation.context == {"use_case": "demo"}


@pytest.mark.parametrize(
    ("header", "pair"),
    [
        ("; ".join(f"k{i}=v" for i in range(11)), None),
        ("use_case=x; Tier=gold", 2),
        ("use_case=" + "x" * 129, 1),
        ("use_case=a\x01b", 1),
    ],
)
def test_a_malformed_context_is_400_json_on_the_api(squad, api_as, header, pair):
    text_prompt(squad, target="local")
    api = api_as("owner")
    api.headers["X-Studio-Context"] = header
    response = api.call("GET", "/api/v1/squads/acme/prompts/writer?version=1")
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "X-Studio-Context" and "X-Studio-Context" in body["detail"]
    if pair is not None:
        assert body["errors"][0]["pair"] == pair and f"pair {pair}" in body["detail"]
    assert response["X-Request-ID"]


def test_a_malformed_context_is_400_on_pages_too():
    response = Client().get("/healthz", headers={"X-Studio-Context": "nope"})
    assert response.status_code == 400
    assert b"pair 1 ('nope'): expected key=value" in response.content


def test_celery_tasks_bind_their_id_and_the_ids_they_were_given():
    assert task_ids(run_batch_job, (7,), {}) == {"job_id": 7}
    assert task_ids(run_generation, (), {"generation_id": 3}) == {"generation_id": 3}
    structlog.contextvars.bind_contextvars(request_id="left-over")
    task_prerun.send(sender=run_batch_job, task_id="t-9", task=run_batch_job, args=(7,), kwargs={})
    assert structlog.contextvars.get_contextvars() == {
        "task_id": "t-9",
        "task": "generation.batch_job",
        "job_id": 7,
    }
    structlog.contextvars.clear_contextvars()


def test_log_format_setting(monkeypatch):
    import sys

    from apps.telemetry.logconfig import renderer_name

    assert renderer_name("json", debug=True) == "json"
    assert renderer_name("console", debug=False) == "console"
    assert renderer_name("auto", debug=False) == "json"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert renderer_name("auto", debug=True) == "console"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert renderer_name("auto", debug=True) == "json"  # piped to a collector
    with pytest.raises(ValueError, match="STUDIO_LOG_FORMAT must be json, console or auto"):
        renderer_name("xml", debug=False)


def test_bindings_are_dropped_when_the_response_is_closed(squad):
    Client().get("/healthz", headers={"X-Studio-Context": "a=1"})
    assert structlog.contextvars.get_contextvars() == {}
