"""Read-only admin: datasets, versions, fine-tune jobs, adapters and comparisons are
created through the services (UI, API, workers), so every one is checked and audited;
versions and adapters are immutable. Approving adapters goes through the same service
as the API and the adapter page (approve_adapters in the squad, never the job's author)."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.exceptions import ApplicationError
from apps.finetune import jobs
from apps.finetune.models import Adapter, AdapterComparison, Dataset, DatasetVersion, FineTuneJob


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


@admin.register(FineTuneJob)
class FineTuneJobAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "squad",
        "status",
        "dataset_version",
        "base_model",
        "devices",
        "step",
        "total_steps",
        "smoothed_loss",
        "eval_loss",
        "attempts",
        "created_by",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "squad", "failure_kind")
    search_fields = ("base_model", "error")
    list_select_related = ("squad", "dataset_version__dataset", "created_by")


@admin.register(Adapter)
class AdapterAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "squad",
        "base_model",
        "dataset_version",
        "sha256",
        "size_bytes",
        "approved_by",
        "approved_at",
        "created_at",
    )
    list_filter = ("squad", "base_model")
    search_fields = ("sha256", "base_model")
    list_select_related = ("squad", "dataset_version__dataset", "approved_by")
    actions = ("approve",)

    @admin.action(description="Approve the selected adapters")
    def approve(self, request: HttpRequest, queryset: QuerySet[Adapter]) -> None:
        done = 0
        for adapter in queryset.select_related("squad", "job"):
            try:
                jobs.adapter_approve(actor=request.user, adapter=adapter, request=request)
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"Adapter {adapter.pk}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"Approved {done} adapter(s).", messages.SUCCESS)


@admin.register(AdapterComparison)
class AdapterComparisonAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "adapter",
        "status",
        "base_loss",
        "adapter_loss",
        "base_ppl",
        "adapter_ppl",
        "created_by",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "squad")
    list_select_related = ("adapter", "created_by")
