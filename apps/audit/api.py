from django.http import HttpRequest, StreamingHttpResponse
from ninja import Query, Router, Status
from ninja.pagination import LimitOffsetPagination, paginate

from apps.audit import export, selectors, services
from apps.audit.schemas import (
    AuditEventOut,
    AuditExportIn,
    AuditFilterIn,
    ChainVerificationOut,
)

router = Router(tags=["audit"])


@router.get("/events", response=list[AuditEventOut])
@paginate(LimitOffsetPagination)
def event_list(request: HttpRequest, filters: Query[AuditFilterIn]) -> object:
    return selectors.audit_event_list_for_user(
        user=request.auth, filters=selectors.AuditFilter(**filters.dict())
    )


@router.get("/export", response={200: None})
def event_export(request: HttpRequest, params: Query[AuditExportIn]) -> StreamingHttpResponse:
    """Streamed CSV or JSONL of the events the filters select (compliance leads or staff)."""
    filters = params.dict(exclude={"format"})
    events = selectors.audit_event_list_for_user(
        user=request.auth, filters=selectors.AuditFilter(**filters)
    )
    services.audit_export_record(
        actor=request.auth, filters=filters, fmt=params.format.value, request=request
    )
    return export.streaming_response(events, params.format)


@router.post("/verifications", response={202: ChainVerificationOut})
def verification_request(request: HttpRequest) -> Status:
    """Queue a verification of the whole chain on a worker (staff)."""
    return Status(202, services.chain_verification_request(actor=request.auth))


@router.get("/verifications/{verification_id}", response=ChainVerificationOut)
def verification_detail(request: HttpRequest, verification_id: int) -> object:
    return selectors.chain_verification_get_for_user(
        user=request.auth, verification_id=verification_id
    )
