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
# Owners too, as with adapters and adjudication: a squad without a compliance lead still has
# someone who can answer "who changed this", and the owner manages the members it names.
VIEW_AUDIT = SquadPermission(
    "view_audit",
    "Browse and export the squad's audit events",
    frozenset({Role.OWNER, Role.COMPLIANCE}),
)

EDIT_PROMPTS = SquadPermission(
    "edit_prompts",
    "Create prompt templates and versions and move unprotected labels",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)
# Holding this is necessary, not sufficient: label_move also asks the review gate
# (apps.reviews.gate) whether the version is approved under the squad's policy.
MOVE_PROTECTED_LABELS = SquadPermission(
    "move_protected_labels",
    "Move protected labels such as production to an approved version",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)

RUN_GENERATION = SquadPermission(
    "run_generation",
    "Run prompts in the playground, the generate API and batch jobs",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)
MANAGE_TARGETS = SquadPermission(
    "manage_targets", "Add and change the squad's model targets", frozenset({Role.OWNER})
)

# --- reviews: approving prompt versions ------------------------------------------------
MANAGE_APPROVAL_POLICY = SquadPermission(
    "manage_approval_policy",
    "Edit the approval policy: required approvals, protected labels, blocking rules",
    frozenset({Role.OWNER, Role.COMPLIANCE}),
)
REQUEST_REVIEW = SquadPermission(
    "request_review",
    "Open and withdraw review requests on prompt versions",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)
DECIDE_REVIEW = SquadPermission(
    "decide_review",
    "Approve, request changes on or reject a review request",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER, Role.SME, Role.COMPLIANCE}),
)
COMMENT_PROMPTS = SquadPermission(
    "comment_prompts",
    "Comment on prompt versions and resolve comment threads",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER, Role.SME, Role.COMPLIANCE}),
)

# --- reviews: output review queues ------------------------------------------------------
MANAGE_REVIEW_QUEUES = SquadPermission(
    "manage_review_queues",
    "Create and change output review queues and add items to them",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER, Role.COMPLIANCE}),
)
# Annotating also needs one of the queue's own annotator roles (ReviewQueue.annotator_roles).
ANNOTATE_OUTPUTS = SquadPermission(
    "annotate_outputs",
    "Score, edit, approve and reject generated outputs in review queues",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER, Role.SME, Role.COMPLIANCE}),
)
ADJUDICATE_OUTPUTS = SquadPermission(
    "adjudicate_outputs",
    "Settle disagreements between annotators",
    frozenset({Role.OWNER, Role.COMPLIANCE}),
)
EXPORT_REVIEWED_OUTPUTS = SquadPermission(
    "export_reviewed_outputs",
    "Export approved and edited outputs as training data",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)

# --- finetune: datasets --------------------------------------------------------------------
MANAGE_DATASETS = SquadPermission(
    "manage_datasets",
    "Create datasets and dataset versions",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)
RUN_FINETUNE = SquadPermission(
    "run_finetune",
    "Start and cancel LoRA fine-tune jobs",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)
# Owners too, as with adjudication: a squad without a compliance lead can still approve.
# Nobody approves an adapter from a job they started (apps.finetune.jobs.adapter_approve).
APPROVE_ADAPTERS = SquadPermission(
    "approve_adapters",
    "Approve trained adapters for use on model targets",
    frozenset({Role.OWNER, Role.COMPLIANCE}),
)

# --- governance: PII, blocked terms, limits -----------------------------------------------
MANAGE_GOVERNANCE_POLICY = SquadPermission(
    "manage_governance_policy",
    "Edit the squad's governance policy",
    frozenset({Role.OWNER, Role.COMPLIANCE}),
)

# --- evals: test cases and eval runs --------------------------------------------------------
WRITE_TEST_CASES = SquadPermission(
    "write_test_cases",
    "Write, import and delete a template's eval test cases",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER, Role.SME}),
)
RUN_EVALS = SquadPermission(
    "run_evals",
    "Start and cancel eval runs of a prompt version on a model target",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER}),
)

# --- observability: feedback, alerts, webhooks, evidence ------------------------------------
# Production callers report feedback with a service account's token; a viewer may do it.
SUBMIT_FEEDBACK = SquadPermission(
    "submit_feedback",
    "Report feedback (thumbs, score, edited text) on generations",
    ALL_ROLES,
)
MANAGE_ALERTS = SquadPermission(
    "manage_alerts",
    "Set drift-alert thresholds and acknowledge alerts",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER, Role.COMPLIANCE}),
)
MANAGE_WEBHOOKS = SquadPermission(
    "manage_webhooks",
    "Add, change, test and remove the squad's webhooks and read their delivery log",
    frozenset({Role.OWNER}),
)
EXPORT_EVIDENCE = SquadPermission(
    "export_evidence",
    "Download a prompt version's compliance evidence pack",
    frozenset({Role.OWNER, Role.COMPLIANCE}),
)

# --- gateway: service keys, quotas, usage ----------------------------------------------------
MANAGE_GATEWAY = SquadPermission(
    "manage_gateway",
    "Create, rotate and revoke the squad's service keys and set its gateway quotas",
    frozenset({Role.OWNER}),
)
VIEW_GATEWAY = SquadPermission(
    "view_gateway",
    "See the squad's service keys (never their secrets), quotas and gateway usage",
    frozenset({Role.OWNER, Role.PROMPT_ENGINEER, Role.COMPLIANCE}),
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
    MANAGE_APPROVAL_POLICY,
    REQUEST_REVIEW,
    DECIDE_REVIEW,
    COMMENT_PROMPTS,
    MANAGE_REVIEW_QUEUES,
    ANNOTATE_OUTPUTS,
    ADJUDICATE_OUTPUTS,
    EXPORT_REVIEWED_OUTPUTS,
    MANAGE_DATASETS,
    RUN_FINETUNE,
    APPROVE_ADAPTERS,
    MANAGE_GOVERNANCE_POLICY,
    WRITE_TEST_CASES,
    RUN_EVALS,
    SUBMIT_FEEDBACK,
    MANAGE_ALERTS,
    MANAGE_WEBHOOKS,
    EXPORT_EVIDENCE,
    MANAGE_GATEWAY,
    VIEW_GATEWAY,
)
BY_CODENAME: dict[str, SquadPermission] = {p.codename: p for p in REGISTRY}

# Model Meta.permissions for Squad.
MODEL_PERMISSIONS: list[tuple[str, str]] = [(p.codename, p.description) for p in REGISTRY]


def role_permissions(role: Role | str) -> frozenset[str]:
    """Codenames that `role` holds on its squad."""
    return frozenset(p.codename for p in REGISTRY if Role(role) in p.roles)


def role_group_name(squad_id: int, role: Role | str) -> str:
    return f"squad:{squad_id}:{Role(role).value}"
