"""The protected-label gate. `prompts.services.label_move` — the one path every label
move takes (UI, API, admin, commands) — calls `check_label_move` before it writes."""

from apps.core.exceptions import Conflict
from apps.prompts.models import PromptVersion
from apps.reviews.models import ApprovalPolicy, ReviewRequest
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
    if any(r.state == ReviewRequest.State.APPROVED for r in requests):
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
