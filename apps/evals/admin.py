"""Read-only admin: test cases and eval runs are written through the services (UI, API,
workers), so every write is permission-checked and audited."""

from django.contrib import admin
from django.http import HttpRequest

from apps.evals.models import EvalResult, EvalRun, TestCase


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(TestCase)
class TestCaseAdmin(ReadOnlyAdmin):
    list_display = ("name", "template", "squad", "created_by", "updated_at")
    list_filter = ("squad",)
    search_fields = ("name", "template__slug")
    list_select_related = ("template", "squad", "created_by")


@admin.register(EvalRun)
class EvalRunAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "squad",
        "version",
        "target",
        "status",
        "done",
        "total",
        "pass_rate",
        "created_by",
        "finished_at",
    )
    list_filter = ("status", "squad")
    list_select_related = ("squad", "version__template", "target", "created_by")
    exclude = ("cases",)


@admin.register(EvalResult)
class EvalResultAdmin(ReadOnlyAdmin):
    list_display = ("case_name", "run", "passed", "generation_status", "latency_ms")
    list_filter = ("passed",)
    list_select_related = ("run",)
    raw_id_fields = ("run", "case", "generation")
