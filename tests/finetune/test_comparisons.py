"""Adapter comparisons (apps.finetune.comparisons) with the training runtime replaced by
tests.finetune.fake_training and the generation runtime by a recorder; the real
evaluate() runs in tests/workers/test_training.py."""

import json
import math
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core import jobs as core_jobs
from apps.core.exceptions import NotFound, PermissionDenied, ValidationFailed
from apps.finetune import comparisons, jobs
from apps.finetune.models import Adapter, AdapterComparison
from tests.factories import UserFactory
from tests.finetune import fake_training
from tests.finetune.conftest import chat, jsonl, make_dataset, upload
from tests.telemetry.conftest import Samples
from workers.runtime import BackendError, GenerationResult


@pytest.fixture
def script(monkeypatch):
    s = fake_training.Script()
    fake_training.install(monkeypatch, s)
    return s


class Generations:
    """Stands in for workers.runtime.backends.run_conversations: answers
    "<spec name>: <last message>" and records each call; `fail` makes the adapter's
    answer to that input index a BackendError."""

    def __init__(self, fail: int | None = None):
        self.calls = []
        self.fail = fail

    def __call__(self, spec, conversations, params, *, batch_size=8, on_progress=None):
        self.calls.append((spec, conversations, params, batch_size))
        out = []
        for i, conversation in enumerate(conversations):
            if spec.adapter_dir and i == self.fail:
                out.append(BackendError("row 0: prompt too long for the context window"))
            else:
                out.append(GenerationResult(f"{spec.name}: {conversation[-1]['content']}", 5, 3))
        return out


@pytest.fixture
def generations(monkeypatch):
    from workers.runtime import backends

    fake = Generations()
    monkeypatch.setattr(backends, "run_conversations", fake)
    return fake


def user(name: str):
    return UserFactory(username=name)


@pytest.fixture
def adapter(squad, script) -> Adapter:
    """An adapter trained (fake) by the engineer on 10 chat rows, 2 of them in eval."""
    dataset = make_dataset(squad)
    rows = [chat(f"question {i}", f"answer {i}") for i in range(10)]
    version = upload(dataset, jsonl(*rows), eval_fraction=0.2)
    job = jobs.finetune_job_create(
        actor=user("engineer"),
        dataset_version=version,
        train={"max_steps": 2, "max_seq_len": 256, "batch_size": 2},
    )
    jobs.finetune_job_run(job_id=job.pk)
    return Adapter.objects.select_related("squad", "job", "dataset_version__dataset").get(job=job)


def split_rows(adapter: Adapter, split: str) -> list[int]:
    lines = Path(adapter.dataset_version.path).read_text().splitlines()
    return [n for n, line in enumerate(lines, start=1) if json.loads(line)["split"] == split]


def test_a_comparison_scores_both_models_and_generates_side_by_side(
    adapter, script, generations, django_capture_on_commit_callbacks
):
    eval_rows = split_rows(adapter, "eval")
    assert len(eval_rows) == 2
    with django_capture_on_commit_callbacks() as callbacks:
        comparison = comparisons.adapter_comparison_create(
            actor=user("engineer"),
            adapter=adapter,
            prompts=["Where is my parcel?"],
            eval_rows=[eval_rows[1]],
            params={"temperature": 0.7, "seed": 42},
        )
    assert len(callbacks) == 1 and comparison.status == "queued"
    assert comparison.params == {
        "max_new_tokens": 128,
        "temperature": 0.7,
        "top_p": 1.0,
        "seed": 42,
    }
    # The eval row is resolved now: the conversation up to the answer, the answer kept.
    typed, picked = comparison.inputs
    assert typed == {
        "source": "prompt",
        "messages": [{"role": "user", "content": "Where is my parcel?"}],
        "reference": "",
    }
    assert picked["source"] == f"eval row {eval_rows[1]}"
    assert [m["role"] for m in picked["messages"]] == ["system", "user"]
    assert picked["reference"].startswith("answer ")
    requested = AuditEvent.objects.get(action="finetune.comparison_requested")
    assert requested.data["sha256"] == adapter.sha256
    assert requested.data["inputs"] == ["prompt", f"eval row {eval_rows[1]}"]

    samples = Samples().snapshot()
    with django_capture_on_commit_callbacks(execute=True):
        comparisons.adapter_comparison_run(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    assert comparison.status == "succeeded", comparison.error
    assert samples.delta("studio_jobs_total", type="comparison", outcome="succeeded") == 1
    assert (comparison.base_loss, comparison.adapter_loss) == (2.0, 1.5)
    assert comparison.base_ppl == pytest.approx(math.exp(2.0))
    assert comparison.adapter_ppl == pytest.approx(math.exp(1.5))
    assert comparison.loss_delta == pytest.approx(-0.5)
    assert comparison.ppl_delta == pytest.approx(math.exp(1.5) - math.exp(2.0))
    assert (comparison.eval_rows, comparison.eval_tokens) == (2, 20)
    # Both scored with the adapter's own max_seq_len and batch size, base first.
    assert script.evaluations == [(None, 256, 2), (Path(adapter.path), 256, 2)]
    # Both models got the same conversations, parameters and seed in one batch each.
    (base_spec, base_convs, base_params, _), (tuned_spec, tuned_convs, tuned_params, _) = (
        generations.calls
    )
    assert base_spec.adapter_dir == "" and tuned_spec.adapter_dir == adapter.path
    assert base_spec.base_model == tuned_spec.base_model == adapter.base_model
    # both run on the registration the adapter was trained on, which the runtime checks
    assert base_spec.base_model_sha256 == tuned_spec.base_model_sha256
    assert base_spec.base_model_sha256 == adapter.base_model_sha256 != ""
    assert base_convs == tuned_convs == [i["messages"] for i in comparison.inputs]
    assert base_params == tuned_params and base_params.seed == 42
    first = comparison.outputs[0]
    assert first["input"] == "Where is my parcel?"
    assert first["base"] == "base: Where is my parcel?"
    assert first["adapter"] == f"adapter-{adapter.pk}: Where is my parcel?"
    assert comparison.outputs[1]["reference"] == picked["reference"]
    # The rows copy written for scoring is gone.
    assert not comparisons._work_dir(comparison).exists()
    finished = AuditEvent.objects.get(action="finetune.comparison_finished")
    assert finished.data["status"] == "succeeded" and finished.data["adapter_loss"] == 1.5
    # Finished: a second delivery of the task does nothing.
    assert comparisons.adapter_comparison_run(comparison_id=comparison.pk) is None


def test_no_inputs_means_the_first_eval_rows(adapter, script, generations):
    comparison = comparisons.adapter_comparison_create(actor=user("owner"), adapter=adapter)
    assert [i["source"] for i in comparison.inputs] == [
        f"eval row {n}" for n in split_rows(adapter, "eval")
    ]


def test_one_failed_generation_is_kept_by_its_input(adapter, script, monkeypatch):
    from workers.runtime import backends

    monkeypatch.setattr(backends, "run_conversations", Generations(fail=0))
    comparison = comparisons.adapter_comparison_create(
        actor=user("engineer"), adapter=adapter, prompts=["a", "b"]
    )
    comparisons.adapter_comparison_run(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    assert comparison.status == "succeeded"
    first, second = comparison.outputs
    assert first["adapter"] == "" and "too long" in first["adapter_error"]
    assert first["base"] == "base: a" and second["adapter_error"] == ""


def test_a_runtime_error_fails_the_comparison_with_its_reason(adapter, script, generations):
    script.eval_fail_kind = "bad_data"
    comparison = comparisons.adapter_comparison_create(
        actor=user("engineer"), adapter=adapter, prompts=["hello"]
    )
    comparisons.adapter_comparison_run(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    assert comparison.status == "failed" and comparison.finished_at is not None
    assert comparison.error == "bad_data: row 2: cannot be scored (bad_data)"
    assert comparison.outputs == [] and generations.calls == []
    assert AuditEvent.objects.get(action="finetune.comparison_finished").data["status"] == (
        "failed"
    )


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"prompts": ["  "]}, "prompts[0]", "prompts[0] is empty"),
        ({"prompts": ["x" * 4001]}, "prompts[0]", "the limit is 4000"),
        ({"prompts": [f"p{i}" for i in range(9)]}, "prompts", "at most 8"),
        ({"eval_rows": [0]}, "eval_rows[0]", "has rows 1 to 10 (got 0)"),
        ({"eval_rows": [11]}, "eval_rows[0]", "has rows 1 to 10 (got 11)"),
        ({"eval_rows": ["3"]}, "eval_rows[0]", "must be a row number"),
        ({"params": {"temperature": 3}}, "params.temperature", "must be 0.0 to 2.0"),
        ({"params": {"max_new_tokens": 0}}, "params.max_new_tokens", "must be 1 to 2048"),
        ({"params": {"beams": 2}}, "params.beams", "Unknown params setting(s): beams"),
    ],
)
def test_bad_inputs_are_refused_by_field(adapter, kwargs, field, message):
    with pytest.raises(ValidationFailed, match=re.escape(message)) as e:
        comparisons.adapter_comparison_create(actor=user("engineer"), adapter=adapter, **kwargs)
    assert e.value.field == field
    assert not AdapterComparison.objects.exists()


def test_picked_rows_must_be_eval_rows_chosen_once(adapter):
    train_row = split_rows(adapter, "train")[0]
    eval_row = split_rows(adapter, "eval")[0]
    with pytest.raises(ValidationFailed, match=f"row {train_row} is in the train split") as e:
        comparisons.adapter_comparison_create(
            actor=user("engineer"), adapter=adapter, eval_rows=[eval_row, train_row]
        )
    assert e.value.field == "eval_rows[1]"
    with pytest.raises(ValidationFailed, match=f"row {eval_row} is chosen twice"):
        comparisons.adapter_comparison_create(
            actor=user("engineer"), adapter=adapter, eval_rows=[eval_row, eval_row]
        )


def test_without_eval_rows_a_prompt_is_needed(squad, script, generations):
    dataset = make_dataset(squad, slug="no-eval", format="prompt_completion")
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    version = upload(dataset, jsonl(*rows), eval_fraction=0)
    job = jobs.finetune_job_create(
        actor=user("engineer"), dataset_version=version, train={"max_steps": 1}
    )
    jobs.finetune_job_run(job_id=job.pk)
    adapter = Adapter.objects.get(job=job)
    with pytest.raises(ValidationFailed, match="has no eval rows to pick from") as e:
        comparisons.adapter_comparison_create(actor=user("engineer"), adapter=adapter)
    assert e.value.field == "prompts"
    comparison = comparisons.adapter_comparison_create(
        actor=user("engineer"), adapter=adapter, prompts=["q9"]
    )
    comparisons.adapter_comparison_run(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    # No eval rows: no losses, but the outputs side by side.
    assert comparison.status == "succeeded"
    assert comparison.base_loss is None and comparison.loss_delta is None
    assert comparison.outputs[0]["adapter"] == f"adapter-{adapter.pk}: q9"


def test_only_those_who_run_fine_tunes_start_comparisons_and_members_read_them(adapter):
    for name in ("sme", "compliance", "viewer"):
        with pytest.raises(PermissionDenied):
            comparisons.adapter_comparison_create(actor=user(name), adapter=adapter, prompts=["hi"])
    with pytest.raises(NotFound):
        comparisons.adapter_comparison_create(
            actor=user("outsider"), adapter=adapter, prompts=["hi"]
        )
    from apps.finetune import selectors

    comparison = comparisons.adapter_comparison_create(
        actor=user("owner"), adapter=adapter, prompts=["hi"]
    )
    found = selectors.adapter_comparison_get_for_user(
        user=user("viewer"), adapter=adapter, comparison_id=comparison.pk
    )
    assert found == comparison
    with pytest.raises(NotFound):
        selectors.adapter_comparison_get_for_user(
            user=user("outsider"), adapter=adapter, comparison_id=comparison.pk
        )


def test_a_live_lease_keeps_a_second_worker_out_and_a_stale_one_is_recovered(
    adapter, script, generations, settings, django_capture_on_commit_callbacks
):
    comparison = comparisons.adapter_comparison_create(
        actor=user("engineer"), adapter=adapter, prompts=["hi"]
    )
    AdapterComparison.objects.filter(pk=comparison.pk).update(
        status="running", worker="elsewhere:1", heartbeat_at=timezone.now(), attempts=1
    )
    assert comparisons.adapter_comparison_run(comparison_id=comparison.pk) is None
    assert core_jobs.recover() == {}
    stale = timezone.now() - timedelta(hours=1)
    AdapterComparison.objects.filter(pk=comparison.pk).update(heartbeat_at=stale)
    with django_capture_on_commit_callbacks() as callbacks:
        assert core_jobs.recover() == {"comparison": ([comparison.pk], [])}
    assert len(callbacks) == 1
    AdapterComparison.objects.filter(pk=comparison.pk).update(
        status="running", heartbeat_at=stale, attempts=comparison.max_attempts
    )
    assert core_jobs.recover() == {"comparison": ([], [comparison.pk])}
    comparison.refresh_from_db()
    assert comparison.status == "failed" and comparison.error.startswith("worker_lost")


def test_an_adapter_of_another_registration_of_its_base_is_refused(
    adapter, script, generations, django_capture_on_commit_callbacks
):
    """By manifest hash, as attaching to a target: refused when the comparison is asked
    for, and failed with the reason when the base changed while it waited."""
    from apps.basemodels.models import BaseModelVersion

    queued = comparisons.adapter_comparison_create(actor=user("engineer"), adapter=adapter)
    current = BaseModelVersion.objects.get(model__name=adapter.base_model, status="ready")
    BaseModelVersion.objects.filter(pk=current.pk).update(manifest_sha256="f" * 64)
    with pytest.raises(ValidationFailed, match="only goes on the base model it was") as e:
        comparisons.adapter_comparison_create(actor=user("engineer"), adapter=adapter)
    assert e.value.field == "adapter"
    comparisons.adapter_comparison_run(comparison_id=queued.pk)
    queued.refresh_from_db()
    assert queued.status == "failed"
    assert "only goes on the base model it was trained on" in queued.error
    assert generations.calls == [] and script.evaluations == []
