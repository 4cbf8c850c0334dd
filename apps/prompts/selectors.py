from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Prefetch, Q, QuerySet

from apps.core.exceptions import NotFound
from apps.prompts.models import Label, LabelMove, PromptTemplate, PromptVersion
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import VIEW_SQUAD
from apps.squads.selectors import squad_get_for_user

User = AbstractBaseUser | AnonymousUser


def prompt_template_get_for_user(*, user: User, squad_slug: str, slug: str) -> PromptTemplate:
    """The template, if the user can see its squad; 404 for missing and forbidden alike."""
    squad = squad_get_for_user(user=user, slug=squad_slug)
    template = (
        PromptTemplate.objects.select_related("squad", "latest_version", "latest_version__author")
        .filter(squad=squad, slug=slug)
        .first()
    )
    if template is None:
        raise NotFound(f"Prompt '{slug}' not found in squad '{squad_slug}'.")
    return template


def prompt_template_list_for_user(
    *,
    user: User,
    squad: Squad,
    q: str | None = None,
    tag: str | None = None,
    label: str | None = None,
    author: str | None = None,
) -> QuerySet[PromptTemplate]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    templates = PromptTemplate.objects.filter(squad=squad).select_related(
        "latest_version", "latest_version__author"
    )
    if q:
        templates = templates.filter(Q(slug__icontains=q) | Q(description__icontains=q))
    if tag:
        # Tags are a JSON list of slugs; match the quoted element in its text form.
        templates = templates.filter(tags__icontains=f'"{tag}"')
    if label:
        templates = templates.filter(labels__name=label)
    if author:
        templates = templates.filter(versions__author__username=author)
    return (
        templates.prefetch_related(
            Prefetch("labels", queryset=Label.objects.select_related("version"))
        )
        .distinct()
        .order_by("slug")
    )


def prompt_version_list(*, user: User, template: PromptTemplate) -> QuerySet[PromptVersion]:
    require_squad_permission(user, template.squad, VIEW_SQUAD)
    return (
        template.versions.select_related("author", "parent")
        .prefetch_related(Prefetch("labels", queryset=Label.objects.only("name", "version_id")))
        .order_by("-number")
    )


def prompt_version_get(*, user: User, template: PromptTemplate, number: int) -> PromptVersion:
    require_squad_permission(user, template.squad, VIEW_SQUAD)
    version = (
        template.versions.select_related("author", "parent", "template__squad")
        .filter(number=number)
        .first()
    )
    if version is None:
        raise NotFound(f"Prompt '{template.slug}' has no version {number}.", field="version")
    return version


def label_list(*, user: User, template: PromptTemplate) -> QuerySet[Label]:
    require_squad_permission(user, template.squad, VIEW_SQUAD)
    return template.labels.select_related("version", "updated_by").prefetch_related(
        Prefetch(
            "moves",
            queryset=LabelMove.objects.select_related("from_version", "to_version", "actor"),
        )
    )
