"""Read-only admin: datasets and versions are created through the services (UI, API), so
every one is checked, numbered under a lock and audited; versions are immutable."""

from django.contrib import admin
from django.http import HttpRequest

from apps.finetune.models import Dataset, DatasetVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ("slug", "name", "squad", "format", "latest_version", "created_at")
    list_filter = ("squad", "format")
    search_fields = ("slug", "name")
    list_select_related = ("squad", "latest_version")


@admin.register(DatasetVersion)
class DatasetVersionAdmin(ReadOnlyAdmin):
    list_display = (
        "dataset",
        "number",
        "source",
        "row_count",
        "train_count",
        "eval_count",
        "sha256",
        "created_by",
        "created_at",
    )
    list_filter = ("source", "dataset__squad")
    list_select_related = ("dataset", "created_by")
