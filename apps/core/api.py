"""Staff set a squad's share of GPU workers (the admin console calls the same service)."""

from typing import Annotated

from django.http import HttpRequest
from ninja import Router, Schema
from pydantic import Field

from apps.core import services
from apps.core.http import BoundedInt

router = Router(tags=["jobs"])


class GpuShareIn(Schema):
    # Strict: true and "5" are not numbers (pydantic would coerce them); the service
    # checks the ranges and names the field.
    share: Annotated[BoundedInt, Field(strict=True)] = 1
    max_running: Annotated[BoundedInt, Field(strict=True)] | None = None


class GpuShareOut(Schema):
    squad: str
    share: int
    max_running: int | None


@router.put("/gpu-shares/{squad}", response=GpuShareOut)
def gpu_share_put(request: HttpRequest, squad: str, payload: GpuShareIn) -> dict:
    """The squad's weight in the fair share of GPU workers and its limit on GPU jobs
    running at once (null: the installation's default). Staff only."""
    row = services.gpu_share_set(
        actor=request.auth,
        squad_slug=squad,
        share=payload.share,
        max_running=payload.max_running,
        request=request,
    )
    return {"squad": squad, "share": row.share, "max_running": row.max_running}
