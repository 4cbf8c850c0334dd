from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse

from apps.audit import export, services
from apps.audit.models import AuditEvent, ChainVerification


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only browsing; export the selection or the whole filtered list as CSV/JSONL."""

    list_display = (
        "sequence",
        "created_at",
        "actor_label",
        "squad_id",
        "action",
        "target_type",
        "target_id",
    )
    list_filter = ("action", "created_at")
    search_fields = ("actor_label", "action", "target_id")
    date_hierarchy = "created_at"
    actions = ["export_csv", "export_jsonl"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def _export(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent], fmt: export.ExportFormat
    ) -> StreamingHttpResponse:
        services.audit_export_record(
            actor=request.user,
            filters={"admin_selection": queryset.count()},
            fmt=fmt.value,
            request=request,
        )
        return export.streaming_response(queryset.order_by("sequence"), fmt)

    @admin.action(description="Export selected events as CSV")
    def export_csv(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent]
    ) -> StreamingHttpResponse:
        return self._export(request, queryset, export.ExportFormat.CSV)

    @admin.action(description="Export selected events as JSONL")
    def export_jsonl(
        self, request: HttpRequest, queryset: QuerySet[AuditEvent]
    ) -> StreamingHttpResponse:
        return self._export(request, queryset, export.ExportFormat.JSONL)


@admin.register(ChainVerification)
class ChainVerificationAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "status",
        "events_checked",
        "first_broken_sequence",
        "created_at",
        "finished_at",
    )
    readonly_fields = (
        "requested_by",
        "status",
        "events_checked",
        "first_broken_sequence",
        "detail",
        "created_at",
        "started_at",
        "finished_at",
    )

    def has_change_permission(
        self, request: HttpRequest, obj: ChainVerification | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: ChainVerification | None = None
    ) -> bool:
        return False

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        # "Add" queues a verification on a worker.
        created = services.chain_verification_request(actor=request.user)
        obj.pk = created.pk
