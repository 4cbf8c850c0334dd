"""The fine-tune pre-flight: impossible settings refused by the service before a job is
queued (field-named), steps/epochs/time from the rows' tokens and the machine's measured
speed, warnings; the start form's panel, "Check settings", "Clone this job"; the job
page's loss chart and a failed job's log."""

import pytest
from django.test import Client

from apps.audit.models import AuditEvent
from apps.core.exceptions import PermissionDenied, ValidationFailed
from apps.finetune import charts, jobs, preflight
from apps.finetune.models import FineTuneJob
from apps.generation.models import ModelTarget
from tests.factories import PASSWORD, UserFactory
from tests.finetune.conftest import chat, jsonl, make_dataset, upload

pytestmark = pytest.mark.django_db
ANSWER = "The parcel left our warehouse this morning and arrives tomorrow."  # 16 tokens


def user(name: str):
    return UserFactory(username=name)


def _login(name: str) -> Client:
    client = Client()
    assert client.login(username=name, password=PASSWORD)
    return client


@pytest.fixture
def version(squad):
    """Eight train rows, no eval rows."""
    rows = [chat(f"Where is parcel {i}?", ANSWER) for i in range(8)]
    return upload(make_dataset(squad), jsonl(*rows), eval_fraction=0)


@pytest.fixture
def with_eval(squad):
    rows = [chat(f"Where is parcel {i}?", ANSWER) for i in range(40)]
    return upload(make_dataset(squad, slug="with-eval"), jsonl(*rows), eval_fraction=0.25)


def test_max_seq_len_too_short_for_the_answers_is_refused_before_queuing(
    version, django_capture_on_commit_callbacks
):
    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(ValidationFailed) as exc,
    ):
        jobs.finetune_job_create(
            actor=user("engineer"), dataset_version=version, train={"max_seq_len": 16}
        )
    assert exc.value.field == "train.max_seq_len"
    assert "8 of 8 rows have an answer that alone fills it" in exc.value.message
    assert "row 1: about 18 tokens" in exc.value.message and "Use at least 19" in exc.value.message
    assert not callbacks and not FineTuneJob.objects.exists()
    assert not AuditEvent.objects.filter(action="finetune.job_created").exists()
    # Long enough for the answers: queued, the prompts cut (a warning, not a refusal).
    job = jobs.finetune_job_create(
        actor=user("engineer"), dataset_version=version, train={"max_seq_len": 24}
    )
    assert job.status == "queued"


def test_eval_asked_of_a_version_without_eval_rows_is_refused(version, with_eval):
    with pytest.raises(ValidationFailed, match="has no eval rows") as exc:
        jobs.finetune_job_create(
            actor=user("engineer"), dataset_version=version, train={"eval_every": 5}
        )
    assert exc.value.field == "train.eval_every"
    job = jobs.finetune_job_create(
        actor=user("engineer"), dataset_version=with_eval, train={"eval_every": 5}
    )
    assert job.status == "queued"


def test_plan_counts_steps_epochs_and_time_from_the_rows(version, with_eval):
    plan = preflight.finetune_plan(
        actor=user("engineer"),
        dataset_version=version,
        train={"batch_size": 2, "epochs": 3, "max_seq_len": 512},
    )
    assert (plan.train_rows, plan.eval_rows, plan.batches_per_epoch) == (8, 0, 4)
    assert plan.total_steps == 12 and plan.epochs == 3
    rows = preflight.row_tokens(version, "smollm2-135m-instruct")
    per_row = rows[0].total
    assert plan.tokens_trained == 3 * 8 * per_row
    assert plan.tokens_per_second == preflight.DEFAULT_TOKENS_PER_SECOND
    assert plan.seconds == pytest.approx(plan.tokens_trained / 140.0)
    assert plan.speed_source.startswith("default (140 tokens/s)")
    assert [w["field"] for w in plan.warnings] == ["dataset_version"]

    # 2,000 steps on 8 rows: 1,000 epochs — warned, naming the knob.
    absurd = preflight.finetune_plan(
        actor=user("engineer"), dataset_version=version, train={"max_steps": 2000, "batch_size": 4}
    )
    warning = next(w for w in absurd.warnings if w["field"] == "train.max_steps")
    assert "2,000 steps on 8 train rows is 1,000 epochs" in warning["message"]
    # Eval passes count at a third of a trained token.
    evaluated = preflight.finetune_plan(
        actor=user("engineer"), dataset_version=with_eval, train={"max_steps": 10, "eval_every": 5}
    )
    eval_tokens = sum(
        r.total
        for r in preflight.row_tokens(with_eval, "smollm2-135m-instruct")
        if r.split == "eval"
    )
    assert evaluated.eval_rows == with_eval.eval_count > 0
    assert evaluated.seconds == pytest.approx(
        (evaluated.tokens_trained + 2 * eval_tokens / 3) / 140.0
    )


def test_speed_is_the_median_of_the_last_finished_jobs(version):
    target = ModelTarget.objects.get(name="local", squad__isnull=True)
    for tps, status in (
        (100.0, "succeeded"),
        (300.0, "succeeded"),
        (250.0, "succeeded"),
        (9999.0, "failed"),
    ):
        FineTuneJob.objects.create(
            squad=version.dataset.squad,
            dataset_version=version,
            target=target,
            base_model=target.base_model,
            status=status,
            tokens_per_second=tps,
        )
    speed, source = preflight.measured_speed(target.base_model)
    assert speed == 250.0 and source.startswith("measured: median of the last 3 finished jobs")
    plan = preflight.finetune_plan(actor=user("engineer"), dataset_version=version)
    assert plan.seconds == pytest.approx(plan.tokens_trained / 250.0)


def test_plan_needs_the_run_permission(version):
    with pytest.raises(PermissionDenied):
        preflight.finetune_plan(actor=user("sme"), dataset_version=version)


# --- the pages -------------------------------------------------------------------------


def test_start_form_shows_the_preflight_and_check_does_not_start(version):
    client = _login("engineer")
    page = client.get("/squads/acme/finetune/").content.decode()
    assert 'id="preflight"' in page and 'id="plan-steps">2 ' in page
    assert 'hx-post="/squads/acme/finetune/preflight"' in page
    checked = client.post(
        "/squads/acme/finetune/",
        {"dataset": "support-chat", "target": "local", "max_seq_len": "16", "action": "check"},
    )
    body = checked.content.decode()
    assert checked.status_code == 422 and not FineTuneJob.objects.exists()
    assert "<code>train.max_seq_len</code>: train.max_seq_len 16 is too short" in body
    assert 'id="j-seq" name="max_seq_len" min="16" value="16" aria-invalid="true"' in body
    panel = client.post(
        "/squads/acme/finetune/preflight",
        {"dataset": "support-chat", "target": "local", "max_steps": "2000"},
        headers={"HX-Request": "true"},
    )
    body = panel.content.decode()
    assert panel.status_code == 200 and "<html" not in body
    assert 'id="plan-steps">2000 ' in body and "1,000 epochs" in body
    started = client.post(
        "/squads/acme/finetune/",
        {"dataset": "support-chat", "target": "local", "max_seq_len": "16"},
    )
    assert started.status_code == 422 and not FineTuneJob.objects.exists()


def test_clone_fills_the_form_with_the_jobs_settings(version):
    job = jobs.finetune_job_create(
        actor=user("engineer"),
        dataset_version=version,
        lora={"r": 4},
        train={"max_steps": 7, "learning_rate": 0.001},
    )
    client = _login("engineer")
    detail = client.get(f"/squads/acme/finetune/jobs/{job.pk}/").content.decode()
    assert f'href="/squads/acme/finetune/?clone={job.pk}#new-job">Clone this job</a>' in detail
    form = client.get(f"/squads/acme/finetune/?clone={job.pk}").content.decode()
    assert 'name="r" min="1" value="4"' in form
    assert 'name="max_steps" min="1" value="7"' in form
    assert 'name="learning_rate" value="0.001"' in form
    # Settings left at their defaults stay empty, as when the job was started.
    assert 'name="eval_every" min="1" value=""' in form
    assert 'name="batch_size" min="1" value=""' in form
    assert 'id="plan-steps">7 ' in form
    assert (
        "Clone this job"
        not in _login("sme").get(f"/squads/acme/finetune/jobs/{job.pk}/").content.decode()
    )


def test_loss_chart_has_axes_eval_points_and_checkpoints():
    svg = charts.loss_chart(
        points=[[1, 2.0, 2.0, None], [5, 1.5, 1.8, 1.7], [10, 1.0, 1.4, 1.2]],
        total_steps=20,
        checkpoint_every=4,
    )
    assert svg.count('class="eval-point"') == 2
    assert "eval loss at step 10: 1.2000" in svg
    # Checkpoints written so far (steps 4 and 8), none beyond the last point.
    assert "checkpoint at step 4" in svg and "checkpoint at step 8" in svg
    assert "checkpoint at step 12" not in svg
    assert ">step</text>" in svg and ">loss</text>" in svg
    assert 'class="x-tick"' in svg and ">20</text>" in svg and 'class="y-tick"' in svg
    assert 'role="img"' in svg and "<desc" in svg
    assert charts.loss_chart(points=[], total_steps=None, checkpoint_every=None) == ""


def test_failed_job_page_shows_its_failure_in_the_log(version):
    job = jobs.finetune_job_create(actor=user("engineer"), dataset_version=version)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status="failed",
        failure_kind="bad_data",
        error="row 3: the answer is empty",
        finished_at=job.created_at,
    )
    page = _login("viewer").get(f"/squads/acme/finetune/jobs/{job.pk}/").content.decode()
    log = page[page.index('id="log"') :]
    assert "Failed (bad_data)</strong>: row 3: the answer is empty" in log
    assert "Nothing logged yet" not in page
    assert "the job failed before training started" in log
    assert "GPU worker" not in page
