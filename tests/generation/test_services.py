import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from apps.audit.models import AuditEvent
from apps.core.exceptions import NotFound, PermissionDenied, ValidationFailed
from apps.generation import services
from apps.generation.models import BatchJob, Generation
from apps.prompts.contracts import RenderFailed
from tests.factories import UserFactory
from tests.generation.conftest import json_prompt, remote_target, text_prompt
from tests.generation.fake_openai import FakeOpenAI, scripted

pytestmark = pytest.mark.django_db


def _run_one(version, variables, user="engineer", **kw) -> Generation:
    generation = services.generation_request(
        actor=UserFactory(username=user), version=version, variables=variables, **kw
    )
    return services.generation_run(generation_id=generation.pk)


def test_text_generation_records_everything(squad, fake_server):
    remote_target(squad, fake_server.url)
    version = text_prompt(squad)
    g = _run_one(version, {"topic": "tides"})
    assert g.status == "ok" and g.output_text == "echo: Write about tides."
    assert g.output_json is None and g.errors == []
    assert (g.input_tokens, g.output_tokens) == (10, 4)
    assert g.cost == Decimal("0.011")  # 10/1000*0.5 + 4/1000*1.5
    assert g.latency_ms >= 0 and g.finished_at is not None
    assert g.target_used == "fake" and g.source == "api" and len(g.rendered_hash) == 64
    sent = fake_server.requests[0]
    assert sent["messages"] == [{"role": "user", "content": "Write about tides."}]
    assert sent["max_tokens"] == 16 and sent["temperature"] == 0.0 and sent["seed"] == 1


def test_variables_are_checked_before_queueing(squad, fake_server):
    remote_target(squad, fake_server.url)
    version = text_prompt(squad)
    with pytest.raises(RenderFailed) as info:
        services.generation_request(
            actor=UserFactory(username="engineer"), version=version, variables={"n": "x"}
        )
    assert {e["path"] for e in info.value.extra} == {"$", "$.n"}
    assert Generation.objects.count() == 0


def test_viewers_cannot_run_and_unknown_targets_are_refused(squad, fake_server):
    remote_target(squad, fake_server.url)
    version = text_prompt(squad)
    with pytest.raises(PermissionDenied):
        services.generation_request(
            actor=UserFactory(username="viewer"), version=version, variables={"topic": "x"}
        )
    with pytest.raises(NotFound, match="No enabled model target named 'nope'"):
        services.generation_request(
            actor=UserFactory(username="engineer"),
            version=version,
            variables={"topic": "x"},
            target_name="nope",
        )


def test_valid_json_is_parsed_and_stored(squad):
    with FakeOpenAI(scripted('```json\n{"label": "spam", "score": 0.9}\n```')) as server:
        remote_target(squad, server.url)
        g = _run_one(json_prompt(squad), {"topic": "win a prize"})
    assert g.status == "ok" and g.output_json == {"label": "spam", "score": 0.9}
    assert [a["kind"] for a in g.attempts] == ["first"]


def test_invalid_json_gets_one_repair_with_the_errors_fed_back(squad):
    with FakeOpenAI(scripted('{"label": "eggs"}', '{"label": "ham", "score": 0.1}')) as server:
        remote_target(squad, server.url)
        g = _run_one(json_prompt(squad), {"topic": "hello"})
        repair_request = server.requests[1]["messages"]
    assert g.status == "ok" and g.output_json == {"label": "ham", "score": 0.1}
    assert [a["kind"] for a in g.attempts] == ["first", "repair"]
    assert repair_request[-2] == {"role": "assistant", "content": '{"label": "eggs"}'}
    assert "$.label" in repair_request[-1]["content"]
    assert g.input_tokens == 20  # both calls are counted


def test_fallback_target_after_a_failed_repair(squad):
    with (
        FakeOpenAI(scripted("not json at all")) as primary,
        FakeOpenAI(scripted('{"label": "ham", "score": 0.5}')) as backup,
    ):
        remote_target(squad, primary.url, name="fake")
        remote_target(squad, backup.url, name="backup")
        g = _run_one(json_prompt(squad, fallback="backup"), {"topic": "x"})
    assert g.status == "ok" and g.target_used == "backup"
    assert [(a["target"], a["kind"]) for a in g.attempts] == [
        ("fake", "first"),
        ("fake", "repair"),
        ("backup", "fallback"),
    ]


def test_never_silently_accepts_invalid_output(squad):
    with FakeOpenAI(scripted('{"label": "eggs", "score": "high"}')) as server:
        remote_target(squad, server.url)
        g = _run_one(json_prompt(squad), {"topic": "x"})
    assert g.status == "invalid" and g.output_json is None
    assert sorted(e["path"] for e in g.errors) == ["$.label", "$.score"]
    assert g.output_text == '{"label": "eggs", "score": "high"}'


def test_client_errors_fail_without_retry_and_fall_back(squad):
    error = (400, {"error": {"message": "bad request: max_tokens too large"}})
    with FakeOpenAI(scripted(error)) as broken, FakeOpenAI() as backup:
        remote_target(squad, broken.url, name="fake")
        remote_target(squad, backup.url, name="backup")
        failed = _run_one(text_prompt(squad), {"topic": "x"})
        assert len(broken.requests) == 1
        assert failed.status == "failed" and "400" in failed.errors[0]["message"]
        saved = _run_one(text_prompt(squad, slug="other", fallback_target="backup"), {"topic": "y"})
    assert saved.status == "ok" and saved.target_used == "backup"


def test_generation_run_is_idempotent(squad, fake_server):
    remote_target(squad, fake_server.url)
    g = _run_one(text_prompt(squad), {"topic": "x"})
    services.generation_run(generation_id=g.pk)
    assert len(fake_server.requests) == 1


# --- targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "remote", "base_url": "ftp://x"}, "base_url"),
        (
            {"kind": "remote", "base_url": "http://h", "token_env": "hf_abcdefSECRET123"},
            "token_env",
        ),
        # Only variables set aside for target tokens: never the server's own secrets.
        ({"kind": "remote", "base_url": "http://h", "token_env": "PATH"}, "token_env"),
        ({"kind": "remote", "base_url": "http://h", "token_env": "SECRET_KEY"}, "token_env"),
        ({"kind": "remote", "base_url": "http://h", "token_env": "DATABASE_URL"}, "token_env"),
        ({"kind": "local", "base_model": "gpt-9"}, "base_model"),
        ({"kind": "local", "default_params": {"temperature": "hot"}}, "default_params"),
        ({"kind": "local", "default_params": {"max_new_tokens": -5}}, "default_params"),
        ({"kind": "local", "default_params": {"top_p": [1]}}, "default_params"),
        ({"kind": "local", "default_params": {"logit_bias": {}}}, "default_params"),
        ({"kind": "local", "base_url": "http://h"}, "base_url"),
        ({"kind": "gpu"}, "kind"),
        ({"kind": "local", "price_input_per_1k": "-1"}, "price_input_per_1k"),
    ],
)
def test_target_validation(squad, fields, field):
    with pytest.raises(ValidationFailed) as info:
        services.model_target_create(
            actor=UserFactory(username="owner"), squad=squad, name="t", **fields
        )
    assert info.value.field == field


def test_a_target_token_comes_only_from_variables_set_aside_for_it(squad, fake_server, settings):
    owner = UserFactory(username="owner")
    target = services.model_target_create(
        actor=owner,
        squad=squad,
        name="t",
        kind="remote",
        base_url=fake_server.url,
        token_env="STUDIO_TARGET_TOKEN_TGI",
    )
    assert target.token_env == "STUDIO_TARGET_TOKEN_TGI"
    # A target saved under a wider setting is refused at call time once it narrows: the
    # token is never read, let alone sent.
    settings.STUDIO_TARGET_TOKEN_ENVS = "OTHER_*"
    from apps.generation.pipeline import target_spec

    with pytest.raises(ValidationFailed) as info:
        target_spec(target)
    assert info.value.field == "token_env" and "STUDIO_TARGET_TOKEN_ENVS" in info.value.message


def test_squad_target_shadows_the_global_one(squad, fake_server):
    from apps.generation.targets import target_resolve

    assert target_resolve(squad_id=squad.pk, name="local").squad_id is None
    remote_target(squad, fake_server.url, name="local")
    assert target_resolve(squad_id=squad.pk, name="local").squad_id == squad.pk


# --- batch jobs -------------------------------------------------------------------------------


def _batches_dir() -> list[Path]:
    root = Path(settings.DATA_DIR) / "batches"
    return list(root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    ("filename", "content", "rows"),
    [
        ("rows.jsonl", '{"topic": "a"}\n{"topic": 5}\nnot json\n{"n": 1}\n', [2, 3, 4]),
        ("rows.csv", "topic,n\nok,1\n,2\nfine,two\n", [3, 4]),
        ("rows.csv", "topic\na,extra\n", [2]),
        # Issue 14, defect 7: these were 500s (csv.Error, RecursionError).
        ("rows.csv", f"topic\nok\n{'x' * 131_073}\n", [3]),
        ("rows.jsonl", '{"topic": "a"}\n' + "[" * 5000 + "]" * 5000 + "\n", [2]),
        ("rows.csv", 'topic,n\nok,1\nok,"' + "[" * 5000 + "]" * 5000 + '"\n', [3]),
        ("rows.jsonl", '{"topic": "a\\u0000"}\n', [1]),
        # A number past 4,300 digits: json.loads raises a plain ValueError (was a 500).
        ("rows.jsonl", '{"topic": "a"}\n{"topic": "b", "words": ' + "9" * 5000 + "}\n", [2]),
    ],
)
def test_bad_rows_refuse_the_upload_and_nothing_is_stored(
    squad, fake_server, filename, content, rows
):
    remote_target(squad, fake_server.url)
    version = text_prompt(squad)
    before = _batches_dir()
    with pytest.raises(ValidationFailed) as info:
        services.batch_job_create(
            actor=UserFactory(username="engineer"),
            version=version,
            content=content.encode(),
            filename=filename,
        )
    assert sorted({e["row"] for e in info.value.extra}) == rows
    assert "nothing was stored" in info.value.message
    assert BatchJob.objects.count() == 0 and _batches_dir() == before
    assert not AuditEvent.objects.filter(action="generation.batch_started").exists()


def test_only_the_first_100_row_errors_are_listed(squad, fake_server):
    remote_target(squad, fake_server.url)
    content = "".join('{"n": 1}\n' for _ in range(250)).encode()
    with pytest.raises(ValidationFailed) as info:
        services.batch_job_create(
            actor=UserFactory(username="engineer"),
            version=text_prompt(squad),
            content=content,
            filename="r.jsonl",
        )
    assert len(info.value.extra) == 100
    assert info.value.message.startswith("250 of 250 rows refused — nothing was stored.")


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("rows.txt", "x", "Upload a .jsonl or .csv"),
        ("rows.jsonl", "\n\n", "no rows"),
        ("rows.csv", "", "no header"),
        ("rows.jsonl", b"\xff\xfe\x00", "not UTF-8"),
    ],
)
def test_unusable_files_are_refused(squad, fake_server, filename, content, message):
    remote_target(squad, fake_server.url)
    with pytest.raises(ValidationFailed, match=message):
        services.batch_job_create(
            actor=UserFactory(username="engineer"),
            version=text_prompt(squad),
            content=content if isinstance(content, bytes) else content.encode(),
            filename=filename,
        )


def _job(squad, server, n: int, batch_size: int = 4) -> BatchJob:
    remote_target(squad, server.url)
    content = "".join(json.dumps({"topic": f"topic {i}" + "!" * (i % 5)}) + "\n" for i in range(n))
    return services.batch_job_create(
        actor=UserFactory(username="engineer"),
        version=text_prompt(squad),
        content=content.encode(),
        filename="rows.jsonl",
        batch_size=batch_size,
    )


def test_batch_job_writes_one_generation_per_row(
    squad, fake_server, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        job = _job(squad, fake_server, 10)
    assert len(callbacks) == 1  # the gpu task, enqueued at commit
    services.batch_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.rows_done == 10 and job.output_tokens > 0
    rows = list(job.generations.order_by("row_index").values_list("row_index", "output_text"))
    assert [r[0] for r in rows] == list(range(10))
    assert rows[3][1] == "echo: Write about topic 3!!!."
    # A second run (a redelivered message) changes nothing.
    services.batch_job_run(job_id=job.pk)
    assert job.generations.count() == 10 and len(fake_server.requests) == 10
    assert AuditEvent.objects.filter(action="generation.batch_finished").count() == 1


def test_resumed_job_skips_rows_already_written(squad, fake_server):
    job = _job(squad, fake_server, 6)
    services.batch_job_run(job_id=job.pk)
    job.generations.filter(row_index__in=[1, 4]).delete()
    from apps.generation.models import BatchJob as Job

    Job.objects.filter(pk=job.pk).update(status="running", finished_at=None, heartbeat_at=None)
    services.batch_job_run(job_id=job.pk)
    assert sorted(job.generations.values_list("row_index", flat=True)) == list(range(6))
    assert len(fake_server.requests) == 8  # 6 + the 2 missing rows


def test_cancel_before_start_and_refused_after_finish(squad, fake_server):
    job = _job(squad, fake_server, 3)
    engineer = UserFactory(username="engineer")
    cancelled = services.batch_job_cancel(actor=engineer, job=job)
    assert cancelled.status == "cancelled"
    assert services.batch_job_run(job_id=job.pk) is None
    assert fake_server.requests == []
    from apps.core.exceptions import Conflict

    with pytest.raises(Conflict, match="already cancelled"):
        services.batch_job_cancel(actor=engineer, job=job)
