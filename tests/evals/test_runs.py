"""Eval runs end to end against the fake OpenAI-compatible server (the same remote
runtime batch jobs use), the judge on a second fake target, resume, cancel, the sweeper,
comparisons, and governance on the eval path."""

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.exceptions import Conflict, PermissionDenied, ValidationFailed
from apps.evals import selectors, services
from apps.evals.models import EvalRun
from apps.generation.models import Generation
from apps.governance import services as governance
from tests.evals.conftest import add_case, json_prompt, remote_target
from tests.factories import UserFactory
from tests.generation.fake_openai import FakeOpenAI, scripted

pytestmark = pytest.mark.django_db


def _start(version, **kw) -> EvalRun:
    return services.eval_run_create(actor=UserFactory(username="engineer"), version=version, **kw)


def _cases(template):
    add_case(template, "tides", "tides", [{"type": "contains", "value": "tides"}], tags=["smoke"])
    add_case(template, "moon", "the moon", [{"type": "contains", "value": "tides"}])
    add_case(
        template,
        "short",
        "sun",
        [
            {"type": "regex", "pattern": r"^echo: "},
            {"type": "max_output_tokens", "value": 100},
            {"type": "not_contains", "value": "SUN", "case_sensitive": False},
        ],
    )


def test_run_executes_every_case_and_records_results(
    writer, fake_server, django_capture_on_commit_callbacks
):
    _cases(writer.template)
    with django_capture_on_commit_callbacks() as callbacks:
        run = _start(writer)
    assert len(callbacks) == 1  # evals.run, enqueued at commit
    assert run.status == "queued" and run.total == 3 and run.target.name == "fake"
    services.eval_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded" and run.finished_at and run.attempts == 1
    assert (run.done, run.passed, run.failed_count) == (3, 1, 2)
    assert run.pass_rate == pytest.approx(1 / 3)
    results = {r.case_name: r for r in selectors.eval_results(run=run)}
    assert results["tides"].passed and results["tides"].output == "echo: Write about tides."
    moon = results["moon"]
    assert not moon.passed and moon.failing == [
        {"type": "contains", "passed": False, "detail": "'tides' not found"}
    ]
    assert [a["passed"] for a in results["short"].assertion_results] == [True, True, False]
    assert moon.generation.source == Generation.Source.EVAL and moon.generation.provenance
    assert moon.output_tokens == moon.generation.output_tokens > 0
    assert moon.case.name == "moon" and moon.variables == {"topic": "the moon"}
    assert selectors.eval_run_latest(version=writer, target=run.target) == run
    assert list(
        AuditEvent.objects.filter(action__startswith="eval.run").values_list("action", flat=True)
    ) == ["eval.run_started", "eval.run_finished"]
    # A redelivered message changes nothing.
    assert services.eval_run_execute(run_id=run.pk) is None
    assert len(fake_server.requests) == 3


def test_tags_select_cases_and_a_run_without_cases_is_refused(writer):
    _cases(writer.template)
    run = _start(writer, tags=["smoke"])
    assert [c["name"] for c in run.cases] == ["tides"] and run.tags == ["smoke"]
    with pytest.raises(ValidationFailed, match="no test cases with any of the tags nope") as info:
        _start(writer, tags=["nope"])
    assert info.value.field == "tags"


def test_only_engineers_and_owners_run_and_cancel(writer):
    _cases(writer.template)
    for user in ("sme", "compliance", "viewer"):
        with pytest.raises(PermissionDenied):
            services.eval_run_create(actor=UserFactory(username=user), version=writer)
    run = services.eval_run_create(actor=UserFactory(username="owner"), version=writer)
    with pytest.raises(PermissionDenied):
        services.eval_run_cancel(actor=UserFactory(username="sme"), run=run)


def test_resume_skips_cases_that_have_a_result(writer, fake_server):
    _cases(writer.template)
    run = _start(writer, batch_size=1)
    services.eval_run_execute(run_id=run.pk)
    run.results.filter(case_name="moon").delete()
    EvalRun.objects.filter(pk=run.pk).update(status="running", heartbeat_at=None)
    services.eval_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded" and run.done == 3 and run.attempts == 2
    assert sorted(run.results.values_list("position", flat=True)) == [0, 1, 2]
    assert len(fake_server.requests) == 4  # 3 + the missing case


def test_a_deleted_case_keeps_its_copy_on_the_result(writer):
    _cases(writer.template)
    run = _start(writer)
    writer.template.test_cases.get(name="moon").delete()
    services.eval_run_execute(run_id=run.pk)
    moon = run.results.get(case_name="moon")
    assert moon.case is None and moon.variables == {"topic": "the moon"}


def test_cancel(writer, fake_server):
    _cases(writer.template)
    engineer = UserFactory(username="engineer")
    queued = _start(writer)
    assert services.eval_run_cancel(actor=engineer, run=queued).status == "cancelled"
    assert services.eval_run_execute(run_id=queued.pk) is None
    with pytest.raises(Conflict, match="already cancelled"):
        services.eval_run_cancel(actor=engineer, run=queued)
    running = _start(writer)
    EvalRun.objects.filter(pk=running.pk).update(status="running", cancel_requested=True)
    services.eval_run_execute(run_id=running.pk)
    running.refresh_from_db()
    assert running.status == "cancelled" and running.done == 0
    assert fake_server.requests == []


def test_sweeper_requeues_stale_runs(writer, monkeypatch, django_capture_on_commit_callbacks):
    _cases(writer.template)
    stale, fresh = _start(writer), _start(writer)
    old = timezone.now() - timezone.timedelta(hours=1)
    EvalRun.objects.filter(pk=stale.pk).update(status="running", heartbeat_at=old)
    EvalRun.objects.filter(pk=fresh.pk).update(status="running", heartbeat_at=timezone.now())
    queued = []
    monkeypatch.setattr("apps.core.queues.send", lambda name, *args, queue: queued.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.recover() == {"eval": ([stale.pk], [])}
    assert queued == [(stale.pk,)]


def test_schema_valid_and_equals_json_on_a_json_prompt(squad):
    answers = scripted('{"label": "spam", "score": 0.9}')
    with FakeOpenAI(answers) as server:
        remote_target(squad, server.url)
        version = json_prompt(squad)
        add_case(
            version.template,
            "spam",
            "win a prize",
            [
                {"type": "schema_valid"},
                {"type": "equals_json", "value": {"label": "spam", "score": 0.9}},
            ],
        )
        add_case(
            version.template,
            "ham",
            "hello",
            [{"type": "equals_json", "value": {"label": "ham", "score": 0.1}}],
        )
        run = _start(version)
        services.eval_run_execute(run_id=run.pk)
    results = {r.case_name: r for r in run.results.all()}
    assert results["spam"].passed and not results["ham"].passed
    assert "got" in results["ham"].failing[0]["detail"]


def test_judge_runs_on_its_own_target(writer, squad):
    def grade(request):
        answer = request["messages"][-1]["content"]
        return "Score: 9" if "Answer:\necho: Write about tides." in answer else "0.2"

    with FakeOpenAI(grade) as judge_server:
        remote_target(squad, judge_server.url, name="judge")
        rubric = {"type": "judge", "rubric": "About tides?", "target": "judge", "threshold": 0.7}
        add_case(writer.template, "tides", "tides", [rubric])
        add_case(writer.template, "moon", "the moon", [rubric])
        run = _start(writer)
        services.eval_run_execute(run_id=run.pk)
        asked = judge_server.requests
    results = {r.case_name: r for r in run.results.all()}
    assert results["tides"].passed and not results["moon"].passed
    verdict = results["tides"].assertion_results[0]
    assert verdict["score"] == 0.9 and verdict["raw"] == "Score: 9"
    assert "Score: 9" in verdict["detail"]
    assert results["moon"].assertion_results[0]["score"] == 0.2
    assert len(asked) == 2 and asked[0]["temperature"] == 0.0
    prompts = sorted(r["messages"][-1]["content"] for r in asked)
    assert prompts[1] == (
        'Rubric:\nAbout tides?\n\nInput:\n{"topic": "tides"}\n\n'
        "Answer:\necho: Write about tides.\n\nScore:"
    )


def test_a_broken_judge_fails_its_assertion_not_the_run(writer, squad):
    with FakeOpenAI(scripted((400, {"error": {"message": "judge down"}}))) as judge_server:
        remote_target(squad, judge_server.url, name="judge")
        rubric = {"type": "judge", "rubric": "ok?", "target": "judge", "threshold": 0.5}
        add_case(writer.template, "tides", "tides", [rubric])
        run = _start(writer)
        services.eval_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded" and run.passed == 0
    assert "judge down" in run.results.get().assertion_results[0]["detail"]


def test_a_failing_model_fails_the_case(squad):
    with FakeOpenAI(scripted((400, {"error": {"message": "bad request"}}))) as server:
        remote_target(squad, server.url)
        from tests.evals.conftest import text_prompt

        version = text_prompt(squad)
        add_case(version.template, "x", "x", [{"type": "not_contains", "value": "zzz"}])
        run = _start(version)
        services.eval_run_execute(run_id=run.pk)
    result = run.results.get()
    assert not result.passed and result.generation_status == "failed"
    assert result.assertion_results[0]["type"] == "generation"
    assert result.assertion_results[1] == {
        "type": "not_contains",
        "passed": True,
        "detail": "'zzz' not found",
    }


def test_governance_blocks_redacts_and_flags_on_the_eval_path(writer, fake_server, squad):
    governance.policy_update(
        actor=UserFactory(username="compliance"),
        squad=squad,
        rules={"pii": {"ssn": "block", "email": "redact", "phone": "flag"}},
    )
    add_case(
        writer.template, "phone", "ring +44 20 7946 0958", [{"type": "contains", "value": "echo"}]
    )
    add_case(writer.template, "ssn", "ssn 123-45-6789", [{"type": "not_contains", "value": "x"}])
    add_case(
        writer.template, "mail", "mail ada@example.com", [{"type": "contains", "value": "EMAIL"}]
    )
    run = _start(writer)
    services.eval_run_execute(run_id=run.pk)
    results = {r.case_name: r for r in run.results.all()}
    blocked = results["ssn"]
    assert not blocked.passed and blocked.generation.status == "blocked"
    assert blocked.assertion_results[0]["type"] == "governance"
    assert "Blocked by the squad's governance policy v1" in blocked.assertion_results[0]["detail"]
    redacted = results["mail"]
    assert redacted.passed and redacted.output == "echo: Write about mail [EMAIL_1]."
    flagged = results["phone"]
    assert flagged.passed and {f["action"] for f in flagged.generation.findings} == {"flag"}
    sent = sorted(r["messages"][-1]["content"] for r in fake_server.requests)
    # The flagged value goes as it is; the blocked case never reached the model.
    assert sent == ["Write about mail [EMAIL_1].", "Write about ring +44 20 7946 0958."]


def test_variables_refused_by_a_newer_schema_fail_the_case(writer, fake_server):
    add_case(writer.template, "x", "x", [{"type": "contains", "value": "x"}])
    writer.template.test_cases.update(variables={"topic": 5})
    run = _start(writer)
    services.eval_run_execute(run_id=run.pk)
    result = run.results.get()
    assert not result.passed and result.generation is None
    assert result.assertion_results[0]["type"] == "variables"
    assert "$.topic" in result.assertion_results[0]["detail"]
    assert fake_server.requests == []


def test_compare_lists_regressions_fixes_and_unchanged(squad, writer):
    from apps.prompts import services as prompts

    _cases(writer.template)
    add_case(writer.template, "always", "x", [{"type": "contains", "value": "echo"}])
    base = _start(writer)
    services.eval_run_execute(run_id=base.pk)
    v2 = prompts.prompt_version_create(
        actor=UserFactory(username="engineer"),
        template=writer.template,
        messages=[{"role": "user", "content": "Tell me of tides and {{ topic }}."}],
        input_schema=writer.input_schema,
        model={"target": "fake", "max_new_tokens": 16},
        commit_message="v2",
    )
    head = _start(v2)
    services.eval_run_execute(run_id=head.pk)
    viewer = UserFactory(username="viewer")
    comparison = selectors.compare_runs(user=viewer, squad=squad, base_id=base.pk, head_id=head.pk)
    names = lambda rows: sorted(r["name"] for r in rows)  # noqa: E731
    # v2 always mentions tides: "moon" is fixed; "short" fails on "SUN"? no — on the regex? no.
    assert names(comparison.fixes) == ["moon"]
    assert names(comparison.regressions) == []
    assert names(comparison.unchanged) == ["always", "short", "tides"]
    back = selectors.compare_runs(user=viewer, squad=squad, base_id=head.pk, head_id=base.pk)
    assert names(back.regressions) == ["moon"] and names(back.fixes) == []
    assert back.regressions[0]["failing"][0]["type"] == "contains"
    assert comparison.pass_rate_delta == pytest.approx(0.25)


def test_eval_generations_and_runs_are_counted_in_the_metrics(
    writer, django_capture_on_commit_callbacks
):
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        value("studio_generations_total", status="ok", source="eval"),
        value("studio_jobs_total", type="eval", outcome="succeeded"),
    )
    _cases(writer.template)
    run = _start(writer)
    with django_capture_on_commit_callbacks(execute=True):  # the job metric counts at commit
        services.eval_run_execute(run_id=run.pk)
    assert value("studio_generations_total", status="ok", source="eval") == before[0] + 3
    assert value("studio_jobs_total", type="eval", outcome="succeeded") == before[1] + 1


def test_a_finished_run_emits_the_job_finished_webhook(writer, squad):
    from apps.webhooks import services as webhooks
    from apps.webhooks.models import WebhookDelivery

    webhooks.webhook_create(
        actor=UserFactory(username="owner"),
        squad=squad,
        url="https://receiver.example/hook",
        events=["job.finished"],
    )
    _cases(writer.template)
    run = _start(writer)
    assert not WebhookDelivery.objects.exists()
    services.eval_run_execute(run_id=run.pk)
    cancelled = services.eval_run_cancel(actor=UserFactory(username="engineer"), run=_start(writer))
    first, second = [d.payload["data"] for d in WebhookDelivery.objects.order_by("id")]
    assert first == {
        "squad": "acme",
        "kind": "eval",
        "job": run.pk,
        "status": "succeeded",
        "url": f"/squads/acme/evals/runs/{run.pk}/",
        "template": "writer",
        "version": 1,
        "target": "fake",
        "done": 3,
        "total": 3,
        "passed": 1,
        "pass_rate": pytest.approx(1 / 3),
        "actor": "engineer",
    }
    assert second["job"] == cancelled.pk and second["status"] == "cancelled"
