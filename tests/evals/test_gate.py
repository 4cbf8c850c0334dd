"""The eval gate through the label-move service: with a minimum pass rate in the squad's
approval policy, a protected label needs the latest finished eval run of the version on
its own model target to reach it."""

import pytest

from apps.core.exceptions import Conflict
from apps.evals import services
from apps.evals.models import EvalRun
from apps.evals.selectors import eval_gate_status_for_user
from apps.prompts import services as prompts
from apps.reviews.services import approvals
from tests.evals.conftest import add_case, remote_target
from tests.factories import UserFactory
from tests.reviews.factories import approve

pytestmark = pytest.mark.django_db


@pytest.fixture
def approved(writer, squad):
    """'writer' v1 approved, two cases: 'tides' passes, 'moon' fails (pass rate 50 %)."""
    add_case(writer.template, "tides", "tides", [{"type": "contains", "value": "tides"}])
    add_case(writer.template, "moon", "the moon", [{"type": "contains", "value": "tides"}])
    approve(writer)
    return writer


def _minimum(squad, value):
    approvals.approval_policy_update(
        actor=UserFactory(username="owner"), squad=squad, min_eval_pass_rate=value
    )


def _move(version):
    return prompts.label_move(
        actor=UserFactory(username="owner"),
        template=version.template,
        name="production",
        version=version,
    )


def _run(version, **kw) -> EvalRun:
    run = services.eval_run_create(actor=UserFactory(username="engineer"), version=version, **kw)
    services.eval_run_execute(run_id=run.pk)
    run.refresh_from_db()
    return run


def test_no_minimum_no_eval_needed(approved):
    assert _move(approved).version == approved


def test_no_run_is_refused(approved, squad):
    _minimum(squad, 0.5)
    with pytest.raises(Conflict) as info:
        _move(approved)
    assert info.value.message == (
        "Label 'production' is protected and needs an eval pass rate of at least 50%: "
        "version 1 has no finished eval run on target 'fake'. Run its test cases first."
    )
    assert info.value.extra["eval_run"] is None


def test_below_the_minimum_is_refused(approved, squad):
    run = _run(approved)
    assert run.pass_rate == 0.5
    _minimum(squad, 0.75)
    with pytest.raises(Conflict) as info:
        _move(approved)
    assert info.value.message == (
        "Label 'production' is protected and needs an eval pass rate of at least 75%: the "
        f"latest eval run #{run.pk} of version 1 on 'fake' passed 50% (1 of 2), below 75%."
    )
    assert info.value.extra == {
        "eval_run": run.pk,
        "target": "fake",
        "minimum": 0.75,
        "pass_rate": 0.5,
    }


def test_at_the_minimum_is_allowed_and_the_latest_run_counts(approved, squad):
    _run(approved)
    _minimum(squad, 0.5)
    assert _move(approved).version == approved
    # A later, worse run takes over.
    approved.template.test_cases.filter(name="tides").update(
        assertions=[{"type": "contains", "value": "nope"}]
    )
    worse = _run(approved)
    assert worse.pass_rate == 0.0
    prompts.label_move(
        actor=UserFactory(username="owner"),
        template=approved.template,
        name="staging",
        version=approved,
    )
    v2 = prompts.prompt_version_create(
        actor=UserFactory(username="engineer"),
        template=approved.template,
        messages=approved.messages,
        input_schema=approved.input_schema,
        model={**approved.model_settings, "seed": 2},
        commit_message="v2",
    )
    approve(v2)
    with pytest.raises(Conflict, match="version 2 has no finished eval run"):
        _move(v2)
    approved.template.test_cases.filter(name="tides").update(
        assertions=[{"type": "contains", "value": "tides"}]
    )
    assert _run(v2).pass_rate == 0.5
    _move(v2)
    with pytest.raises(Conflict, match="passed 0%"):
        _move(approved)  # rolling back to v1 now meets its worse latest run


def test_only_runs_on_the_versions_own_target_and_finished_runs_count(approved, squad, fake_server):
    remote_target(squad, fake_server.url, name="other")
    _run(approved, target_name="other")  # 50 % on another target
    _minimum(squad, 0.5)
    with pytest.raises(Conflict, match="no finished eval run on target 'fake'"):
        _move(approved)
    run = services.eval_run_create(actor=UserFactory(username="engineer"), version=approved)
    EvalRun.objects.filter(pk=run.pk).update(status="failed", pass_rate=1.0)
    with pytest.raises(Conflict, match="no finished eval run"):
        _move(approved)


def test_unprotected_labels_are_not_gated(approved, squad):
    _minimum(squad, 1.0)
    label = prompts.label_move(
        actor=UserFactory(username="owner"),
        template=approved.template,
        name="staging",
        version=approved,
    )
    assert label.name == "staging"


def test_a_run_limited_to_tags_does_not_count(approved, squad):
    # Only the full run measures the version: a run over the cases with one tag (here the
    # one passing case) must not open the gate.
    approved.template.test_cases.filter(name="tides").update(tags=["easy"])
    subset = _run(approved, tags=["easy"])
    assert (subset.status, subset.total, subset.pass_rate) == ("succeeded", 1, 1.0)
    _minimum(squad, 0.75)
    with pytest.raises(Conflict, match="no finished eval run on target 'fake'"):
        _move(approved)
    status = eval_gate_status_for_user(user=UserFactory(username="owner"), version=approved)
    assert status.latest is None and status.runs == [] and not status.meets
    full = _run(approved)
    assert full.pass_rate == 0.5
    _run(approved, tags=["easy"])  # a later subset run does not replace the full one
    with pytest.raises(Conflict) as info:
        _move(approved)
    assert info.value.extra["eval_run"] == full.pk
    _minimum(squad, 0.5)
    assert _move(approved).version == approved
