"""The base-model registry: every signed-in user reads it; staff register and change."""

from django.http import HttpRequest
from ninja import Router, Status

from apps.basemodels import selectors, services
from apps.basemodels.models import BaseModel
from apps.basemodels.schemas import (
    BaseModelOut,
    BaseModelRegisterIn,
    BaseModelUpdateIn,
    BaseModelVersionOut,
)

router = Router(tags=["base models"])


def _out(model: BaseModel) -> dict:
    versions = list(model.versions.all())
    return {"name": model.name, "current": model.current, "versions": versions}


@router.get("/base-models", response=list[BaseModelOut])
def base_model_list(request: HttpRequest) -> list[dict]:
    """Registered base models with every version (status, facts, manifest, licence)."""
    return [_out(m) for m in selectors.base_model_list()]


@router.get("/base-models/{name}", response=BaseModelOut)
def base_model_get(request: HttpRequest, name: str) -> dict:
    return _out(selectors.base_model_get(name))


@router.post("/base-models", response={202: BaseModelVersionOut})
def base_model_register(request: HttpRequest, payload: BaseModelRegisterIn) -> Status:
    """Staff only: register a model (a new version of `name`); a worker reads and hashes
    its files, then the version is `ready` or `refused` with the reason."""
    version = services.base_model_register(actor=request.auth, request=request, **payload.dict())
    return Status(202, version)


@router.patch("/base-models/{name}", response=BaseModelVersionOut)
def base_model_update(request: HttpRequest, name: str, payload: BaseModelUpdateIn):
    """Staff only: change the licence or notes (a new version, same files)."""
    return services.base_model_update(
        actor=request.auth,
        model=selectors.base_model_get(name),
        licence=payload.licence,
        notes=payload.notes,
        request=request,
    )
