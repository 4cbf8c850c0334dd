"""The protected-label gate. `prompts.services.label_move` — the one path every label
move takes (UI, API, admin, commands) — calls `check_label_move` before it writes."""

from apps.core.exceptions import Conflict, NotFound
from apps.prompts.models import PromptVersion
from apps.reviews.models import ApprovalPolicy, ReviewComment, ReviewRequest
from apps.reviews.policy import missing_text, required_slots
from apps.squads.models import Squad


def check_label_move(*, squad: Squad, label: str, version: PromptVersion) -> None:
    """Refuse to point a protected label at a version whose review request is not
    approved under the policy it was opened with. The message lists what is missing."""
    if label not in (squad.protected_labels or []):
        return
    requests = list(
        ReviewRequest.objects.filter(version=version).order_by("-created_at", "-pk")[:5]
    )
    approved = next((r for r in requests if r.state == ReviewRequest.State.APPROVED), None)
    if approved is not None:
        check_threads_resolved(label=label, version=version, review=approved)
        check_eval_gate(squad=squad, label=label, version=version)
        return
    where = f"Label '{label}' is protected: version {version.number} is not approved"
    holding = next((r for r in requests if r.state in ReviewRequest.HOLDING_STATES), None)
    if holding is not None:
        what = "; ".join(holding.missing) or holding.get_state_display().lower()
        raise Conflict(
            f"{where} (review request #{holding.pk} is {holding.get_state_display().lower()}"
            f": {what}).",
            field="version",
            extra={
                "review_request": holding.pk,
                "state": holding.state,
                "missing": holding.missing,
            },
        )
    policy = ApprovalPolicy.objects.filter(squad=squad).first()
    required = policy.required_approvals if policy else ApprovalPolicy().required_approvals
    needs = [missing_text(role, required_slots(required).count(role)) for role in sorted(required)]
    raise Conflict(
        f"{where}: it has no open review request. Request a review; it "
        + (", ".join(needs) if needs else "needs the request approved")
        + ".",
        field="version",
        extra={"review_request": None, "state": None, "missing": needs},
    )


def check_threads_resolved(*, label: str, version: PromptVersion, review: ReviewRequest) -> None:
    """Under a policy with `threads_block`, every comment thread on the version must be
    resolved (the request's state follows its threads; this also holds for a state
    derived before the policy was read)."""
    if not review.policy.get("threads_block"):
        return
    open_threads = ReviewComment.objects.filter(
        version_id=version.pk, parent__isnull=True, resolved_at__isnull=True
    ).count()
    if open_threads:
        raise Conflict(
            f"Label '{label}' is protected: version {version.number} has {open_threads} open "
            f"comment thread{'s' if open_threads != 1 else ''}; the approval policy asks "
            "for every thread to be resolved first.",
            field="version",
            extra={"review_request": review.pk, "open_threads": open_threads},
        )


def check_eval_gate(*, squad: Squad, label: str, version: PromptVersion) -> None:
    """With the policy's minimum eval pass rate set, the latest succeeded eval run of the
    version on its own model target (`model.target`, resolved for the squad) must reach it."""
    from apps.evals.selectors import eval_run_latest
    from apps.generation.targets import target_resolve

    policy = ApprovalPolicy.objects.filter(squad=squad).first()
    minimum = policy.min_eval_pass_rate if policy else None
    if minimum is None:
        return
    where = f"Label '{label}' is protected and needs an eval pass rate of at least {minimum:.0%}"
    name = version.model_settings.get("target", "")
    try:
        target = target_resolve(squad_id=squad.pk, name=name)
    except NotFound as exc:
        raise Conflict(
            f"{where}: version {version.number}'s model target '{name}' is not available.",
            field="version",
            extra={"eval_run": None, "target": name, "minimum": minimum},
        ) from exc
    run = eval_run_latest(version=version, target=target)
    extra = {"eval_run": run.pk if run else None, "target": target.name, "minimum": minimum}
    if run is None:
        raise Conflict(
            f"{where}: version {version.number} has no finished eval run on target "
            f"'{target.name}'. Run its test cases first.",
            field="version",
            extra={**extra, "pass_rate": None},
        )
    if run.pass_rate is None or run.pass_rate < minimum:
        rate = f"{run.pass_rate:.0%}" if run.pass_rate is not None else "no pass rate"
        raise Conflict(
            f"{where}: the latest eval run #{run.pk} of version {version.number} on "
            f"'{target.name}' passed {rate} ({run.passed} of {run.total}), below {minimum:.0%}.",
            field="version",
            extra={**extra, "pass_rate": run.pass_rate},
        )
