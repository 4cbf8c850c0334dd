"""Reads of test cases, eval runs and their results; 404 for missing and forbidden alike."""

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, QuerySet

from apps.core.exceptions import NotFound, ValidationFailed
from apps.evals.models import EvalResult, EvalRun, TestCase
from apps.generation.models import ModelTarget
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_SQUAD

User = AbstractBaseUser | AnonymousUser


def _full_runs() -> QuerySet[EvalRun]:
    """Succeeded runs over all of the template's cases. A cancelled or failed run's pass
    rate covers only part of them, and so does a run limited to `tags`: choosing the tags
    of the passing cases must not meet the gate."""
    return EvalRun.objects.filter(status=EvalRun.Status.SUCCEEDED, tags=[])


def eval_run_latest(*, version: PromptVersion, target: ModelTarget) -> EvalRun | None:
    """The latest succeeded run of `version` on `target` over all its cases
    (`_full_runs`). No permission check: for the label gate and the pages that already
    checked access."""
    return (
        _full_runs()
        .filter(version=version, target=target)
        .select_related("target", "version")
        .defer("cases")
        .order_by("-finished_at", "-pk")
        .first()
    )


def eval_runs_latest_per_target(*, version: PromptVersion) -> list[EvalRun]:
    """The latest succeeded run of `version` over all its cases on each target it ran
    on, by target name."""
    latest: dict[int, EvalRun] = {}
    runs = (
        _full_runs()
        .filter(version=version)
        .select_related("target")
        .defer("cases")
        .order_by("-finished_at", "-pk")
    )
    for run in runs:
        latest.setdefault(run.target_id, run)
    return sorted(latest.values(), key=lambda r: r.target.name)


def test_case_list_for_user(
    *, user: User, template: PromptTemplate, tags: list[str] | None = None
) -> QuerySet[TestCase]:
    require_squad_permission(user, template.squad, VIEW_SQUAD)
    cases = TestCase.objects.filter(template=template).select_related("created_by")
    return cases_with_tags(cases, tags)


def cases_with_tags(cases: QuerySet[TestCase], tags: list[str] | None) -> QuerySet[TestCase]:
    """Cases carrying at least one of `tags` (all of them without tags). Tag lists are
    short JSON arrays; the filter runs in Python so it behaves the same on every database."""
    if not tags:
        return cases.order_by("name")
    wanted = set(tags)
    ids = [pk for pk, case_tags in cases.values_list("pk", "tags") if wanted & set(case_tags or [])]
    return cases.filter(pk__in=ids).order_by("name")


def test_case_get_for_user(*, user: User, template: PromptTemplate, case_id: int) -> TestCase:
    require_squad_permission(user, template.squad, VIEW_SQUAD)
    case = TestCase.objects.filter(template=template, pk=case_id).first()
    if case is None:
        raise NotFound(f"Test case {case_id} not found.", field="case")
    return case


def eval_run_list_for_user(
    *, user: User, squad: Squad, template: PromptTemplate | None = None
) -> QuerySet[EvalRun]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    runs = EvalRun.objects.filter(squad=squad).select_related(
        "version__template", "target", "created_by", "squad"
    )
    if template is not None:
        runs = runs.filter(version__template=template)
    return runs.defer("cases")


def eval_run_get_for_user(*, user: User, squad: Squad, run_id: int) -> EvalRun:
    require_squad_permission(user, squad, VIEW_SQUAD)
    run = (
        EvalRun.objects.filter(squad=squad, pk=run_id)
        .select_related("version__template", "target", "created_by", "squad")
        .first()
    )
    if run is None:
        raise NotFound(f"Eval run {run_id} not found.", field="run")
    return run


def eval_results(*, run: EvalRun, failing_only: bool = False) -> QuerySet[EvalResult]:
    """The run's results in case order (call after `eval_run_get_for_user`)."""
    results = run.results.all()
    if failing_only:
        results = results.filter(passed=False)
    return results.order_by("position")


@dataclass
class Comparison:
    base: EvalRun
    head: EvalRun
    regressions: list[dict[str, Any]] = field(default_factory=list)  # passed, now fail
    fixes: list[dict[str, Any]] = field(default_factory=list)  # failed, now pass
    unchanged: list[dict[str, Any]] = field(default_factory=list)  # same verdict
    only_base: list[dict[str, Any]] = field(default_factory=list)
    only_head: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pass_rate_delta(self) -> float | None:
        if self.base.pass_rate is None or self.head.pass_rate is None:
            return None
        return self.head.pass_rate - self.base.pass_rate


def _case_key(result: EvalResult) -> tuple[str, Any]:
    # The case's id while it exists; its name once it was deleted.
    return ("id", result.case_id) if result.case_id else ("name", result.case_name)


def _row(base: EvalResult | None, head: EvalResult | None) -> dict[str, Any]:
    either = head or base
    return {
        "case": either.case_id,
        "name": either.case_name,
        "base_passed": base.passed if base else None,
        "head_passed": head.passed if head else None,
        "base_result": base,
        "head_result": head,
        "failing": [a for a in head.assertion_results if not a.get("passed")] if head else [],
    }


def compare_runs(*, user: User, squad: Squad, base_id: int, head_id: int) -> Comparison:
    """Case by case: regressions (passed in `base`, fail in `head`), fixes, unchanged, and
    cases only one of the runs had. Both runs must be of the same prompt template."""
    base = eval_run_get_for_user(user=user, squad=squad, run_id=base_id)
    head = eval_run_get_for_user(user=user, squad=squad, run_id=head_id)
    if base.version.template_id != head.version.template_id:
        raise ValidationFailed(
            f"Runs {base.pk} and {head.pk} are of different prompts "
            f"('{base.version.template.slug}' and '{head.version.template.slug}').",
            field="head",
        )
    base_results = {_case_key(r): r for r in eval_results(run=base)}
    comparison = Comparison(base=base, head=head)
    for result in eval_results(run=head):
        before = base_results.pop(_case_key(result), None)
        row = _row(before, result)
        if before is None:
            comparison.only_head.append(row)
        elif before.passed and not result.passed:
            comparison.regressions.append(row)
        elif not before.passed and result.passed:
            comparison.fixes.append(row)
        else:
            comparison.unchanged.append(row)
    comparison.only_base = [_row(r, None) for r in base_results.values()]
    return comparison


@dataclass
class EvalGateStatus:
    """What the review request page shows about a version's evals: the policy's minimum
    (None: no eval gate), the version's own target and its latest run there, and the
    latest run on every other target it ran on."""

    minimum: float | None
    target_name: str
    target: ModelTarget | None
    latest: EvalRun | None
    runs: list[EvalRun]

    @property
    def meets(self) -> bool:
        if self.minimum is None:
            return True
        return bool(
            self.latest
            and self.latest.pass_rate is not None
            and self.latest.pass_rate >= self.minimum
        )


def eval_gate_status_for_user(*, user: User, version: PromptVersion) -> EvalGateStatus:
    from apps.generation.targets import target_resolve
    from apps.reviews.models import ApprovalPolicy

    squad = version.template.squad
    require_squad_permission(user, squad, VIEW_SQUAD)
    policy = ApprovalPolicy.objects.filter(squad=squad).first()
    name = version.model_settings.get("target", "")
    try:
        target = target_resolve(squad_id=squad.pk, name=name)
    except NotFound:
        target = None
    return EvalGateStatus(
        minimum=policy.min_eval_pass_rate if policy else None,
        target_name=name,
        target=target,
        latest=eval_run_latest(version=version, target=target) if target else None,
        runs=eval_runs_latest_per_target(version=version),
    )


def prompt_case_counts_for_user(*, user: User, squad: Squad) -> QuerySet[PromptTemplate]:
    """The squad's prompts by slug, each with `case_count` (its test cases) and its latest
    version (the squad's evals page: one query)."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    return (
        PromptTemplate.objects.filter(squad=squad)
        .select_related("latest_version")
        .annotate(case_count=Count("test_cases"))
        .order_by("slug")
    )
