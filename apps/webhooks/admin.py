"""Read-only: webhooks are changed by squad owners through the services (pages and API),
where every change is permission-checked and audited. The secret is never shown here."""

from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from apps.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Webhook)
class WebhookAdmin(ReadOnly):
    list_display = ("id", "squad", "url", "enabled", "created_by", "created_at")
    list_filter = ("enabled",)
    search_fields = ("url", "squad__slug")
    list_select_related = ("squad", "created_by")
    exclude = ("secret_encrypted",)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


class AttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("number", "started_at", "status_code", "error", "duration_ms")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnly):
    list_display = (
        "id",
        "webhook",
        "event",
        "status",
        "attempts",
        "last_status_code",
        "created_at",
    )
    list_filter = ("status", "event")
    search_fields = ("event_id", "webhook__url")
    list_select_related = ("webhook__squad",)
    inlines = [AttemptInline]
    show_full_result_count = False
