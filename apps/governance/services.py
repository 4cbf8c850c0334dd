from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest

from apps.audit.services import audit_log
from apps.core.exceptions import Conflict, ValidationFailed
from apps.governance.models import PolicyVersion
from apps.governance.rules import clean_rules
from apps.governance.selectors import policy_version_current, rules_of
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_GOVERNANCE_POLICY

User = AbstractBaseUser
NOTE_MAX = 500


@transaction.atomic
def policy_update(
    *,
    actor: User,
    squad: Squad,
    rules: dict[str, Any],
    note: str = "",
    request: HttpRequest | None = None,
) -> PolicyVersion:
    """Store the rules as the squad's next policy version (the old ones stay, and the
    generations checked under them keep pointing at them)."""
    require_squad_permission(actor, squad, MANAGE_GOVERNANCE_POLICY)
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise ValidationFailed(
            f"The note is {len(note)} characters long; the limit is {NOTE_MAX}.", field="note"
        )
    cleaned = clean_rules(rules)
    # Lock the squad row: two editors must not both write version N + 1.
    Squad.objects.select_for_update().filter(pk=squad.pk).first()
    current = policy_version_current(squad_id=squad.pk)
    before = rules_of(current)
    if current is not None and cleaned == before:
        raise Conflict(
            f"No change: the rules equal policy version {current.number}.", field="rules"
        )
    policy = PolicyVersion.objects.create(
        squad=squad,
        number=(current.number if current else 0) + 1,
        rules=cleaned,
        note=note,
        created_by=actor,
    )
    audit_log(
        actor=actor,
        action="governance.policy_updated",
        squad=squad,
        target=policy,
        data={
            "version": policy.number,
            "changed": sorted(k for k in cleaned if cleaned[k] != before.get(k)),
            "rules": cleaned,
            "note": note,
        },
        request=request,
    )
    return policy
