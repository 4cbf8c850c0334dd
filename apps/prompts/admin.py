"""Admin console: prompts are browsed here and edited in the studio; label moves made here
go through the same gated service as the UI and the API."""

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect

from apps.core.exceptions import ApplicationError
from apps.prompts import services
from apps.prompts.models import Label, LabelMove, PromptTemplate, PromptVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class VersionInline(admin.TabularInline):
    model = PromptVersion
    fields = ("number", "commit_message", "author", "created_at", "content_hash")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(PromptTemplate)
class PromptTemplateAdmin(ReadOnlyAdmin):
    list_display = ("slug", "squad", "latest_version", "created_at")
    list_filter = ("squad",)
    search_fields = ("slug", "description")
    inlines = [VersionInline]


@admin.register(PromptVersion)
class PromptVersionAdmin(ReadOnlyAdmin):
    list_display = ("template", "number", "author", "created_at", "content_hash")
    list_filter = ("template__squad",)
    search_fields = ("template__slug", "commit_message", "content_hash")


class LabelForm(forms.ModelForm):
    note = forms.CharField(required=False, max_length=500)

    class Meta:
        model = Label
        fields = ("template", "name", "version")


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    form = LabelForm
    list_display = ("template", "name", "version", "updated_by", "updated_at")
    list_filter = ("name", "template__squad")
    autocomplete_fields = ("template",)

    def get_readonly_fields(self, request: HttpRequest, obj: Label | None = None) -> tuple:
        return ("template", "name") if obj else ()

    def has_delete_permission(self, request: HttpRequest, obj: Label | None = None) -> bool:
        return False

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        label = services.label_move(
            actor=request.user,
            template=form.cleaned_data.get("template") or obj.template,
            name=form.cleaned_data.get("name") or obj.name,
            version=form.cleaned_data["version"],
            note=form.cleaned_data.get("note", ""),
            request=request,
        )
        obj.pk = label.pk

    def changeform_view(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().changeform_view(request, *args, **kwargs)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


@admin.register(LabelMove)
class LabelMoveAdmin(ReadOnlyAdmin):
    list_display = ("label", "from_version", "to_version", "actor", "moved_at", "note")
    list_filter = ("label__name",)
