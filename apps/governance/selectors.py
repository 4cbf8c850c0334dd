from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from apps.governance import checks, pii
from apps.governance.models import PolicyVersion
from apps.governance.rules import DEFAULT_RULES
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_SQUAD

User = AbstractBaseUser | AnonymousUser
MAX_TEST_CHARS = 100_000


def policy_version_current(*, squad_id: int) -> PolicyVersion | None:
    """The version in force (no permission check: for the generation services)."""
    return PolicyVersion.objects.filter(squad_id=squad_id).order_by("-number").first()


def rules_of(policy: PolicyVersion | None) -> dict[str, Any]:
    return policy.rules if policy is not None else DEFAULT_RULES


def policy_get_for_user(*, user: User, squad: Squad) -> PolicyVersion | None:
    require_squad_permission(user, squad, VIEW_SQUAD)
    return policy_version_current(squad_id=squad.pk)


def policy_versions_for_user(*, user: User, squad: Squad) -> QuerySet[PolicyVersion]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    return (
        PolicyVersion.objects.filter(squad=squad).select_related("created_by").order_by("-number")
    )


@dataclass
class BenchResult:
    policy: PolicyVersion | None
    text: str
    redacted: str
    findings: list[dict[str, Any]]
    blocked: bool

    def segments(self) -> list[tuple[str, dict[str, Any] | None]]:
        """The text cut at the findings' spans: (piece, finding or None), for <mark>."""
        out, last = [], 0
        for f in sorted(self.findings, key=lambda f: (f["start"], -f["end"])):
            if f["start"] < last or f["start"] == f["end"]:
                continue
            out.append((self.text[last : f["start"]], None))
            out.append((self.text[f["start"] : f["end"]], f))
            last = f["end"]
        out.append((self.text[last:], None))
        return [s for s in out if s[0]]


def policy_test_for_user(*, user: User, squad: Squad, text: str) -> BenchResult:
    """Run the squad's current policy over pasted text, as it would check an input."""
    from apps.core.exceptions import ValidationFailed

    require_squad_permission(user, squad, VIEW_SQUAD)
    if len(text) > MAX_TEST_CHARS:
        raise ValidationFailed(
            f"The text is {len(text)} characters long; the test bench takes at most "
            f"{MAX_TEST_CHARS}.",
            field="text",
        )
    policy = policy_version_current(squad_id=squad.pk)
    checked = checks.scan_text(
        rules_of(policy), text, stage="input", where="text", redactor=pii.Redactor(text)
    )
    return BenchResult(
        policy=policy,
        text=text,
        redacted=checked.text,
        findings=checked.findings,
        blocked=checked.blocked,
    )


def generation_provenance_get_for_user(*, user: User, generation_id: int) -> Any:
    """The generation (with its manifest) if the user may see its squad; 404 otherwise."""
    from apps.core.exceptions import NotFound
    from apps.generation.models import Generation

    generation = Generation.objects.select_related("squad").filter(pk=generation_id).first()
    if generation is None:
        raise NotFound(f"Generation {generation_id} not found.")
    try:
        require_squad_permission(user, generation.squad, VIEW_SQUAD)
    except NotFound as exc:
        raise NotFound(f"Generation {generation_id} not found.") from exc
    return generation
