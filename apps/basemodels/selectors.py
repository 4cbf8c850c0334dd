"""Every read of the base-model registry. The registry is global: every signed-in user
may read it (owners choose from it for their squad's targets); only staff change it."""

from django.db.models import Count, Prefetch, QuerySet

from apps.basemodels.models import BaseModel, BaseModelVersion
from apps.core.exceptions import NotFound, ValidationFailed

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.select_related("current").prefetch_related(
        Prefetch("versions", queryset=BaseModelVersion.objects.order_by("-number"))
    )


def base_model_get(name: str) -> BaseModel:
    usable = isinstance(name, str) and "\x00" not in name and len(name) <= 200
    model = base_model_list().filter(name=name).first() if usable else None
    if model is None:
        raise NotFound(f"Base model '{name}' not found.", field="base_model")
    return model


def base_model_ready(name: str, *, field: str = "base_model") -> BaseModelVersion:
    """The version a target or job naming `name` uses: the model's current version, if
    ready. ValidationFailed naming `field` otherwise (unknown, not yet registered,
    refused, files changed)."""
    if not isinstance(name, str) or "\x00" in name or len(name) > 200:
        raise ValidationFailed("base_model must be a registered model's name.", field=field)
    model = BaseModel.objects.select_related("current").filter(name=name).first()
    if model is None:
        names = ", ".join(ready_names()) or "none"
        raise ValidationFailed(f"Unknown base model '{name}'; registered: {names}.", field=field)
    version = model.current
    if version is not None:
        version.model = model
    if version is None or version.status != BaseModelVersion.Status.READY:
        state = "is not registered yet" if version is None else f"is {version.status}"
        detail = f" ({version.refusal})" if version is not None and version.refusal else ""
        raise ValidationFailed(
            f"Base model '{name}' {state}{detail}; a staff member must register it again.",
            field=field,
        )
    return version


def ready_names() -> list[str]:
    return list(
        BaseModel.objects.filter(current__status=BaseModelVersion.Status.READY).values_list(
            "name", flat=True
        )
    )


def base_model_usage(model: BaseModel) -> dict[str, list]:
    """Which targets and adapters use `model` (for the registry page)."""
    from apps.finetune.models import Adapter
    from apps.generation.models import ModelTarget

    targets = list(
        ModelTarget.objects.filter(kind="local", base_model=model.name)
        .select_related("squad")
        .order_by("squad__slug", "name")
    )
    adapters = list(
        Adapter.objects.filter(base_model=model.name)
        .select_related("squad")
        .order_by("-created_at")
        .annotate(target_count=Count("targets"))[:50]
    )
    return {"targets": targets, "adapters": adapters}
