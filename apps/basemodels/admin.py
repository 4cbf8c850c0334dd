"""Read-only admin of the registry: registrations go through the services (API, page),
so each one is checked by a worker and audited."""

from django.contrib import admin
from django.http import HttpRequest

from apps.basemodels.models import BaseModel, BaseModelVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(BaseModel)
class BaseModelAdmin(ReadOnlyAdmin):
    list_display = ("name", "current", "created_at")
    list_select_related = ("current",)
    search_fields = ("name",)


@admin.register(BaseModelVersion)
class BaseModelVersionAdmin(ReadOnlyAdmin):
    list_display = (
        "model",
        "number",
        "status",
        "source_kind",
        "architecture",
        "parameters",
        "context_length",
        "licence",
        "manifest_sha256",
    )
    list_filter = ("status", "source_kind")
    list_select_related = ("model",)
    search_fields = ("model__name", "manifest_sha256", "source")
