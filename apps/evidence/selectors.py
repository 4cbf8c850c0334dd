from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from apps.prompts.models import PromptVersion
from apps.prompts.selectors import prompt_template_get_for_user, prompt_version_get
from apps.squads.access import require_squad_permission
from apps.squads.permissions import EXPORT_EVIDENCE

User = AbstractBaseUser | AnonymousUser


def evidence_version_get_for_user(
    *, user: User, squad_slug: str, slug: str, number: int
) -> PromptVersion:
    """The version whose evidence pack the user may export: 404 when the squad, prompt or
    version is missing or the squad is not visible, 403 for members without
    `export_evidence` (owners and compliance leads hold it)."""
    template = prompt_template_get_for_user(user=user, squad_slug=squad_slug, slug=slug)
    version = prompt_version_get(user=user, template=template, number=number)
    require_squad_permission(user, template.squad, EXPORT_EVIDENCE)
    return version
