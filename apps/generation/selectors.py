from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import F, Q, QuerySet

from apps.core.exceptions import NotFound, ValidationFailed
from apps.generation.models import BatchJob, Generation, ModelTarget
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_TARGETS, VIEW_SQUAD

if TYPE_CHECKING:
    from apps.basemodels.models import BaseModelVersion
    from apps.finetune.models import Adapter

User = AbstractBaseUser | AnonymousUser


def model_target_list_for_user(*, user: User, squad: Squad) -> QuerySet[ModelTarget]:
    """The squad's own targets and the global ones."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    return ModelTarget.objects.filter(Q(squad=squad) | Q(squad__isnull=True)).order_by(
        "name", "squad_id"
    )


def model_target_get_for_user(*, user: User, squad: Squad, name: str) -> ModelTarget:
    """One of the squad's own targets (global ones are staff's, in the admin)."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    target = (
        ModelTarget.objects.select_related("squad", "lora_adapter")
        .filter(squad=squad, name=name)
        .first()
    )
    if target is None:
        raise NotFound(f"Model target '{name}' not found in squad '{squad.slug}'.")
    return target


@dataclass
class TargetFormOptions:
    """What the target form offers: the ready base models (current versions, with size,
    context and licence) and the squad's approved adapters by the manifest hash of the
    base they were trained on (an adapter is offered only with that base)."""

    bases: list["BaseModelVersion"]
    adapters: dict[str, list["Adapter"]]  # by the manifest_sha256 of their base

    def adapters_for(self, base_model: str) -> list["Adapter"]:
        base = next((b for b in self.bases if b.model.name == base_model), None)
        return self.adapters.get(base.manifest_sha256, []) if base is not None else []


def target_form_options(*, user: User, squad: Squad) -> TargetFormOptions:
    """The target form's choices, for those who may manage the squad's targets
    (PermissionDenied otherwise: the form is not theirs)."""
    from apps.basemodels.models import BaseModelVersion
    from apps.finetune.models import Adapter

    require_squad_permission(user, squad, MANAGE_TARGETS)
    bases = list(
        BaseModelVersion.objects.filter(
            status=BaseModelVersion.Status.READY, model__current_id=F("pk")
        )
        .select_related("model")
        .order_by("model__name")
    )
    adapters: dict[str, list[Adapter]] = {}
    for adapter in Adapter.objects.filter(squad=squad, approved_at__isnull=False).select_related(
        "dataset_version__dataset"
    ):
        adapters.setdefault(adapter.base_model_sha256, []).append(adapter)
    return TargetFormOptions(bases=bases, adapters=adapters)


def generation_get_for_user(*, user: User, squad: Squad, generation_id: int) -> Generation:
    require_squad_permission(user, squad, VIEW_SQUAD)
    generation = (
        Generation.objects.select_related(
            "prompt_version__template", "target", "requested_by", "policy_version"
        )
        .filter(squad=squad, pk=generation_id)
        .first()
    )
    if generation is None:
        raise NotFound(f"Generation {generation_id} not found.")
    return generation


@dataclass(frozen=True)
class GenerationFilter:
    """What the squad's generations list shows; None means any."""

    prompt: str | None = None
    version: int | None = None
    target: str | None = None
    source: str | None = None
    status: str | None = None
    flagged: bool | None = None


def generation_list_for_user(
    *, user: User, squad: Squad, filters: GenerationFilter = GenerationFilter()
) -> QuerySet[Generation]:
    """The squad's generations, newest first (by id: paginate with `pk__lt`), filtered.
    `flagged` means governance found something (Generation.findings is not empty)."""
    require_squad_permission(user, squad, VIEW_SQUAD)
    for name, choices in (("source", Generation.Source), ("status", Generation.Status)):
        value = getattr(filters, name)
        if value is not None and value not in choices.values:
            raise ValidationFailed(
                f"Unknown {name} '{value}'; choose one of {', '.join(choices.values)}.",
                field=name,
            )
    rows = Generation.objects.filter(squad=squad)
    if filters.prompt:
        rows = rows.filter(prompt_version__template__slug=filters.prompt)
    if filters.version is not None:
        rows = rows.filter(prompt_version__number=filters.version)
    if filters.target:
        rows = rows.filter(target__name=filters.target)
    if filters.source:
        rows = rows.filter(source=filters.source)
    if filters.status:
        rows = rows.filter(status=filters.status)
    if filters.flagged is not None:
        rows = rows.exclude(findings=[]) if filters.flagged else rows.filter(findings=[])
    return (
        rows.select_related("prompt_version__template", "target")
        .defer("variables", "output_json", "attempts", "provenance", "errors", "context")
        .order_by("-pk")
    )


def batch_job_list_for_user(*, user: User, squad: Squad) -> QuerySet[BatchJob]:
    require_squad_permission(user, squad, VIEW_SQUAD)
    return BatchJob.objects.filter(squad=squad).select_related(
        "squad", "prompt_version__template", "target", "created_by"
    )


def batch_job_get_for_user(*, user: User, squad: Squad, job_id: int) -> BatchJob:
    job = batch_job_list_for_user(user=user, squad=squad).filter(pk=job_id).first()
    if job is None:
        raise NotFound(f"Batch job {job_id} not found.")
    return job


def batch_results(*, user: User, job: BatchJob, status: str | None = None) -> QuerySet[Generation]:
    require_squad_permission(user, job.squad, VIEW_SQUAD)
    results = job.generations.order_by("row_index")
    if status:
        results = results.filter(status=status)
    return results
