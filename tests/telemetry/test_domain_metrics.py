"""Generation and job metrics recorded by the shared paths, and the scrape-time
collectors (Celery queue depth, review backlog)."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from apps.finetune.models import FineTuneJob
from apps.generation import services
from apps.generation.models import BatchJob, Generation
from apps.telemetry.collectors import QueueDepthCollector, ReviewBacklogCollector, queue_depths
from apps.telemetry.metrics import job_finished
from studio.celery import app as celery_app
from tests.factories import UserFactory
from tests.generation.conftest import remote_target, text_prompt
from tests.reviews import queue_factories as reviews

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def test_an_api_generation_is_counted_once_with_its_labels(
    squad, fake_server, api_as, samples, django_capture_on_commit_callbacks
):
    remote_target(squad, fake_server.url)
    text_prompt(squad)
    response = api_as("engineer").call(
        "POST", "/api/v1/squads/acme/prompts/writer/generate", {"variables": {"topic": "tides"}}
    )
    assert response.status_code == 202, response.content
    generation_id = response.json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        services.generation_run(generation_id=generation_id)
    with django_capture_on_commit_callbacks(execute=True):
        services.generation_run(generation_id=generation_id)  # redelivered: already finished
    labels = {"squad": "acme", "target": "fake", "prompt": "writer"}
    assert samples.delta("studio_generations_total", status="ok", source="api") == 1
    assert samples.delta("studio_generation_latency_seconds_count", **labels) == 1
    tokens = "studio_generation_tokens_total"
    assert samples.delta(tokens, **labels, direction="input") == 10  # the fake's usage
    assert samples.delta(tokens, **labels, direction="output") == 4
    cost = samples.delta("studio_generation_cost_total", squad="acme", target="fake")
    assert cost == pytest.approx(0.011)  # 10/1000*0.5 + 4/1000*1.5


def test_a_blocked_generation_is_counted_without_model_time(
    squad, fake_server, samples, django_capture_on_commit_callbacks
):
    from apps.governance.services import policy_update

    remote_target(squad, fake_server.url)
    version = text_prompt(squad)
    policy_update(
        actor=UserFactory(username="owner"), squad=squad, rules={"blocked_terms": ["forbidden"]}
    )
    with django_capture_on_commit_callbacks(execute=True):
        generation = services.generation_request(
            actor=UserFactory(username="engineer"),
            version=version,
            variables={"topic": "forbidden things"},
        )
    assert generation.status == Generation.Status.BLOCKED
    assert samples.delta("studio_generations_total", status="blocked", source="api") == 1
    labels = {"squad": "acme", "target": "fake", "prompt": "writer"}
    assert samples.delta("studio_generation_latency_seconds_count", **labels) == 0
    assert fake_server.requests == []


def test_a_batch_job_counts_its_rows_and_its_finish(
    squad, fake_server, samples, django_capture_on_commit_callbacks
):
    remote_target(squad, fake_server.url)
    with django_capture_on_commit_callbacks():  # not the gpu task
        job = services.batch_job_create(
            actor=UserFactory(username="engineer"),
            version=text_prompt(squad),
            content=b"".join(json.dumps({"topic": f"t{i}"}).encode() + b"\n" for i in range(5)),
            filename="rows.jsonl",
            batch_size=2,
        )
    with django_capture_on_commit_callbacks(execute=True):
        services.batch_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED
    labels = {"squad": "acme", "target": "fake", "prompt": "writer"}
    assert samples.delta("studio_generations_total", status="ok", source="batch") == 5
    assert samples.delta("studio_generation_latency_seconds_count", **labels) == 5
    assert samples.delta("studio_generation_tokens_total", **labels, direction="input") == 50
    assert samples.delta("studio_jobs_total", type="batch", outcome="succeeded") == 1
    assert samples.delta("studio_job_duration_seconds_count", type="batch", outcome="succeeded")
    seconds = (job.finished_at - job.started_at).total_seconds()
    total = samples.delta("studio_job_duration_seconds_sum", type="batch", outcome="succeeded")
    assert total == pytest.approx(seconds, abs=1e-3)


def test_a_batch_cancelled_before_it_ran_counts_as_cancelled(
    squad, fake_server, samples, django_capture_on_commit_callbacks
):
    remote_target(squad, fake_server.url)
    engineer = UserFactory(username="engineer")
    with django_capture_on_commit_callbacks():
        job = services.batch_job_create(
            actor=engineer,
            version=text_prompt(squad),
            content=b'{"topic": "x"}\n',
            filename="rows.jsonl",
        )
    with django_capture_on_commit_callbacks(execute=True):
        services.batch_job_cancel(actor=engineer, job=job)
    assert samples.delta("studio_jobs_total", type="batch", outcome="cancelled") == 1


def test_finetune_jobs_count_when_they_finish_or_are_cancelled(
    squad, settings, tmp_path, monkeypatch, samples, django_capture_on_commit_callbacks
):
    from apps.finetune import jobs
    from tests.finetune import fake_training
    from tests.finetune.conftest import chat, jsonl, make_dataset, upload

    settings.DATA_DIR = tmp_path
    fake_training.install(monkeypatch, fake_training.Script())
    version = upload(make_dataset(squad), jsonl(*[chat(f"q {i}", f"a {i}") for i in range(10)]))
    engineer = UserFactory(username="engineer")
    train = {"max_steps": 2, "checkpoint_every": 2}
    with django_capture_on_commit_callbacks():
        trained = jobs.finetune_job_create(actor=engineer, dataset_version=version, train=train)
        dropped = jobs.finetune_job_create(actor=engineer, dataset_version=version, train=train)
    with django_capture_on_commit_callbacks(execute=True):
        jobs.finetune_job_run(job_id=trained.pk)
    with django_capture_on_commit_callbacks(execute=True):
        jobs.finetune_job_cancel(actor=engineer, job=dropped)
    trained.refresh_from_db()
    assert trained.status == FineTuneJob.Status.SUCCEEDED, trained.error
    assert samples.delta("studio_jobs_total", type="finetune", outcome="succeeded") == 1
    assert samples.delta("studio_jobs_total", type="finetune", outcome="cancelled") == 1
    seconds = (trained.finished_at - trained.started_at).total_seconds()
    total = samples.delta("studio_job_duration_seconds_sum", type="finetune", outcome="succeeded")
    assert total == pytest.approx(seconds, abs=1e-3)


def test_job_finished_is_the_one_call_for_every_job_kind(samples):
    job_finished("eval", "succeeded", 2.5)
    job_finished("comparison", "failed", 0.5)
    assert samples.delta("studio_jobs_total", type="eval", outcome="succeeded") == 1
    assert samples.delta("studio_job_duration_seconds_sum", type="eval", outcome="succeeded") == 2.5
    assert samples.delta("studio_jobs_total", type="comparison", outcome="failed") == 1
    with pytest.raises(ValueError, match="unknown job kind"):
        job_finished("training", "succeeded", 1.0)


# --- scrape-time collectors ------------------------------------------------------------


def _depth_metric(queues: list[str]) -> dict[str, float]:
    (family,) = QueueDepthCollector(queues).collect()
    return {s.labels["queue"]: s.value for s in family.samples}


def test_queue_depth_counts_messages_waiting_on_the_broker(samples):
    """On whatever broker is configured: the filesystem transport (embedded default) or
    Redis (pass 1 of scripts/test.sh). Unique queue names: no worker consumes them."""
    first, second = f"tq-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4().hex[:8]}"
    try:
        for _ in range(3):
            celery_app.send_task("telemetry.probe", queue=first)
        celery_app.send_task("telemetry.probe", queue=second)
        if settings.CELERY_BROKER_URL.startswith("redis"):
            # kombu keeps priorities in sibling lists; they are waiting messages too.
            celery_app.send_task("telemetry.probe", queue=second, priority=9)
            expected_second = 2
        else:
            expected_second = 1
        assert _depth_metric([first, second, "tq-empty"]) == {
            first: 3,
            second: expected_second,
            "tq-empty": 0,
        }
    finally:
        with celery_app.connection_for_write() as connection:
            for queue in (first, second):
                connection.default_channel.queue_purge(queue)
    assert queue_depths([first, second]) == {first: 0, second: 0}


def test_queue_depth_reads_the_filesystem_broker_folder(settings, tmp_path):
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(tmp_path)}
    for name in ("1_a.default.msg", "2_b.default.msg", "3_c.gpu.msg", "4_d.other.msg", "x.tmp"):
        (tmp_path / name).write_text("{}")
    assert queue_depths(["default", "gpu"]) == {"default": 2, "gpu": 1}


@pytest.mark.skipif(
    not settings.CELERY_BROKER_URL.startswith("redis"),
    reason="CELERY_BROKER_URL does not point at Redis",
)
def test_queue_depth_on_redis_counts_every_priority_list():
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    keys = [queue, f"{queue}\x06\x163", f"{queue}\x06\x169"]
    try:
        client.rpush(keys[0], "a", "b")
        client.rpush(keys[1], "c")
        client.rpush(keys[2], "d")
        assert queue_depths([queue]) == {queue: 4}
    finally:
        client.delete(*keys)


def test_queue_depth_is_left_out_for_other_brokers(settings):
    settings.CELERY_BROKER_URL = "amqp://guest@localhost//"
    assert _depth_metric(["default"]) == {}


def test_review_backlog_counts_items_short_of_k_annotations_in_one_query(
    squad, django_assert_num_queries
):
    from apps.reviews.services import queues as review_services

    support = reviews.queue(squad, name="Support answers", overlap=2)
    legal = reviews.queue(squad, name="Legal", overlap=1)
    reviews.queue(squad, name="Empty")
    items = reviews.external_items(support, 3)
    reviews.external_items(legal, 2)
    # One annotation of two: still waiting. Two of two: done.
    for username in ("sme", "compliance"):
        review_services.review_annotate(
            actor=UserFactory(username=username),
            item=items[0],
            verdict="approve",
            scores=reviews.scores(),
        )
    review_services.review_annotate(
        actor=UserFactory(username="sme"), item=items[1], verdict="approve", scores=reviews.scores()
    )
    archived = reviews.queue(squad, name="Old")
    reviews.external_items(archived, 4)
    type(archived).objects.filter(pk=archived.pk).update(archived_at=archived.created_at)
    with django_assert_num_queries(1):
        (family,) = ReviewBacklogCollector().collect()
    backlog = {(s.labels["squad"], s.labels["queue"]): s.value for s in family.samples}
    assert backlog == {
        ("acme", "support-answers"): 2,
        ("acme", "legal"): 2,
        ("acme", "empty"): 0,
    }


def test_the_scrape_shows_queue_depth_and_review_backlog(squad):
    reviews.external_items(reviews.queue(squad, name="Support answers"), 2)
    body = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert 'studio_review_backlog{queue="support-answers",squad="acme"} 2.0' in body
    assert 'studio_celery_queue_depth{queue="default"}' in body
    assert 'studio_celery_queue_depth{queue="gpu"}' in body


# --- multiprocess mode ----------------------------------------------------------------

WRITER = """
import sys
from apps.telemetry.metrics import http_request_duration, job_finished, request_finished
job_finished("batch", "succeeded", float(sys.argv[1]))
request_finished(view="/healthz", method="GET", status=200, seconds=0.01)
"""


def test_multiprocess_mode_sums_what_every_process_wrote(tmp_path, monkeypatch):
    """Two processes (as two gunicorn workers, or a web worker and a Celery worker) write
    to PROMETHEUS_MULTIPROC_DIR; a scrape from a third sums them."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    for seconds in ("3", "5"):
        subprocess.run(
            [sys.executable, "-c", WRITER, seconds], env=env, cwd=ROOT, check=True, timeout=60
        )
    assert len(list(directory.glob("*.db"))) >= 2  # one file set per process
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    body = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert 'studio_jobs_total{outcome="succeeded",type="batch"} 2.0' in body
    assert 'studio_job_duration_seconds_sum{outcome="succeeded",type="batch"} 8.0' in body
    assert (
        'studio_http_request_duration_seconds_count{method="GET",status="2xx",view="/healthz"} 2.0'
        in body
    )
    # Scrape-time collectors are added to the multiprocess registry too.
    assert "studio_celery_queue_depth" in body and "studio_review_backlog" in body


def test_gunicorn_config_marks_exited_workers_dead(tmp_path, monkeypatch):
    import runpy
    from types import SimpleNamespace

    config = runpy.run_path(str(ROOT / "studio" / "gunicorn.conf.py"))
    assert config["accesslog"] is None  # the middleware writes the access line
    assert config["logconfig_dict"]["formatters"]["structured"]["()"].__name__ == (
        "ProcessorFormatter"
    )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    live = tmp_path / "gauge_livesum_4242.db"
    kept = tmp_path / "counter_4242.db"
    live.write_bytes(b"")
    kept.write_bytes(b"")
    config["child_exit"](None, SimpleNamespace(pid=4242))
    assert not live.exists() and kept.exists()  # counters keep counting after a worker ends
