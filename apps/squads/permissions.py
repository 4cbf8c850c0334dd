"""The permission registry: every squad-scoped permission and the roles that hold it.

Roles are realised as django-guardian object permissions on the Squad: each
squad has one auth Group per role (see `role_group_name`), and each group holds
the object permissions below on that squad. Later apps add their actions here,
in this one module, and a post-migrate sync updates every squad's groups.

A refused permission answers 404 when the permission is `hidden` (the caller
may not even know the object exists) and 403 otherwise, provided the caller
can see the squad at all; a caller who cannot see the squad always gets 404.
"""

from dataclasses import dataclass

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    PROMPT_ENGINEER = "prompt_engineer", "Prompt engineer"
    SME = "sme", "Subject-matter expert"
    COMPLIANCE = "compliance", "Compliance lead"
    VIEWER = "viewer", "Viewer"


ALL_ROLES = frozenset(Role)


@dataclass(frozen=True)
class SquadPermission:
    codename: str
    description: str
    roles: frozenset[Role]
    hidden: bool = False

    @property
    def perm(self) -> str:
        return f"squads.{self.codename}"


VIEW_SQUAD = SquadPermission(
    "view_squad", "See the squad, its members and its work", ALL_ROLES, hidden=True
)
CHANGE_SQUAD = SquadPermission(
    "change_squad", "Rename the squad and edit its description", frozenset({Role.OWNER})
)
MANAGE_MEMBERS = SquadPermission(
    "manage_members", "Add and remove members and change their roles", frozenset({Role.OWNER})
)
VIEW_AUDIT = SquadPermission(
    "view_audit", "Browse and export the squad's audit events", frozenset({Role.COMPLIANCE})
)

EDIT_PROMPTS = SquadPermission(
    "edit_prompts",
    "Create prompt templates and versions and move unprotected labels",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)
# Until the review workflow gates protected labels, owners alone move them.
MOVE_PROTECTED_LABELS = SquadPermission(
    "move_protected_labels",
    "Move protected labels such as production",
    frozenset({Role.OWNER}),
)

RUN_GENERATION = SquadPermission(
    "run_generation",
    "Run prompts in the playground, the generate API and batch jobs",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)
MANAGE_TARGETS = SquadPermission(
    "manage_targets", "Add and change the squad's model targets", frozenset({Role.OWNER})
)

REGISTRY: tuple[SquadPermission, ...] = (
    VIEW_SQUAD,
    CHANGE_SQUAD,
    MANAGE_MEMBERS,
    VIEW_AUDIT,
    EDIT_PROMPTS,
    MOVE_PROTECTED_LABELS,
    RUN_GENERATION,
    MANAGE_TARGETS,
)
BY_CODENAME: dict[str, SquadPermission] = {p.codename: p for p in REGISTRY}

# Model Meta.permissions for Squad.
MODEL_PERMISSIONS: list[tuple[str, str]] = [(p.codename, p.description) for p in REGISTRY]


def role_permissions(role: Role | str) -> frozenset[str]:
    """Codenames that `role` holds on its squad."""
    return frozenset(p.codename for p in REGISTRY if Role(role) in p.roles)


def role_group_name(squad_id: int, role: Role | str) -> str:
    return f"squad:{squad_id}:{Role(role).value}"
