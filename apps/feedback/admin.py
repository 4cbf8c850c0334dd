"""Read-only admin: feedback comes through the API and the pages, alerts from the drift
check, so every one is checked and audited. Acknowledging goes through the same service
as the API and the alerts page (manage_alerts in the squad)."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.exceptions import ApplicationError
from apps.feedback import services
from apps.feedback.models import Alert, AlertRule, Feedback


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    list_display = ("pk", "squad", "generation", "kind", "value", "created_by", "created_at")
    list_filter = ("squad", "kind")
    search_fields = ("external_user_id", "comment")
    list_select_related = ("squad", "generation", "created_by")


@admin.register(AlertRule)
class AlertRuleAdmin(ReadOnlyAdmin):
    list_display = ("squad", "threshold", "window", "baseline_size", "min_samples", "enabled")


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "squad",
        "prompt_version",
        "metric",
        "baseline",
        "current",
        "drop",
        "raised_at",
        "acknowledged_by",
        "acknowledged_at",
    )
    list_filter = ("squad", "metric")
    list_select_related = ("squad", "prompt_version__template", "acknowledged_by")
    actions = ("acknowledge",)

    @admin.action(description="Acknowledge the selected alerts")
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        done = 0
        for alert in queryset.select_related("squad"):
            try:
                services.alert_acknowledge(actor=request.user, alert=alert, request=request)
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"Alert {alert.pk}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"Acknowledged {done} alert(s).", messages.SUCCESS)
