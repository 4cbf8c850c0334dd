"""Staff set each squad's share of GPU workers here, through the service."""

from django.contrib import admin

from apps.core import services
from apps.core.models import GpuShare
from apps.squads.admin import ServiceErrorMixin


@admin.register(GpuShare)
class GpuShareAdmin(ServiceErrorMixin, admin.ModelAdmin):
    list_display = ("squad", "share", "max_running", "updated_by", "updated_at")
    fields = ("squad", "share", "max_running")

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return ("squad",) if obj else ()

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        saved = services.gpu_share_set(
            actor=request.user,
            squad_slug=obj.squad.slug,
            share=obj.share,
            max_running=obj.max_running,
            request=request,
        )
        obj.pk = saved.pk

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
