"""Admin console for squads, memberships and tokens. Every write goes through the
services, so the same rules hold and audit events are written."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from guardian.admin import GuardedModelAdmin

from apps.core.exceptions import ApplicationError
from apps.squads import services, signin
from apps.squads.models import ApiToken, Membership, Squad
from apps.squads.permissions import Role


class ServiceErrorMixin:
    """Show a service's ApplicationError as an admin message instead of a 500."""

    def changeform_view(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().changeform_view(request, *args, **kwargs)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            from django.http import HttpResponseRedirect

            return HttpResponseRedirect(request.get_full_path())

    def delete_view(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().delete_view(request, *args, **kwargs)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            from django.http import HttpResponseRedirect

            return HttpResponseRedirect(request.get_full_path())


@admin.register(Squad)
class SquadAdmin(ServiceErrorMixin, GuardedModelAdmin):
    list_display = ("name", "slug", "created_at", "created_by")
    search_fields = ("name", "slug")
    fields = ("name", "slug", "description")

    def get_readonly_fields(self, request: HttpRequest, obj: Squad | None = None) -> tuple:
        return ("slug",) if obj else ()

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if change:
            services.squad_update(
                actor=request.user,
                squad=Squad.objects.get(pk=obj.pk),
                name=obj.name,
                description=obj.description,
                request=request,
            )
        else:
            created = services.squad_create(
                actor=request.user,
                name=obj.name,
                slug=obj.slug,
                description=obj.description,
                request=request,
            )
            obj.pk = created.pk

    def has_delete_permission(self, request: HttpRequest, obj: Squad | None = None) -> bool:
        # Squads own audited history; they are not deleted from the console.
        return False


class MembershipForm(forms.ModelForm):
    roles = forms.MultipleChoiceField(choices=Role.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Membership
        fields = ("squad", "user", "roles")


@admin.register(Membership)
class MembershipAdmin(ServiceErrorMixin, admin.ModelAdmin):
    form = MembershipForm
    list_display = ("user", "squad", "roles", "created_at")
    list_filter = ("squad",)
    search_fields = ("user__username", "squad__slug")
    autocomplete_fields = ("user", "squad")

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> tuple:
        return ("squad", "user") if obj else ()

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        roles = form.cleaned_data["roles"]
        if change:
            services.membership_set_roles(
                actor=request.user,
                membership=Membership.objects.get(pk=obj.pk),
                roles=roles,
                request=request,
            )
        else:
            created = services.membership_add(
                actor=request.user, squad=obj.squad, user=obj.user, roles=roles, request=request
            )
            obj.pk = created.pk

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        services.membership_remove(actor=request.user, membership=obj, request=request)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset.select_related("squad", "user"):
            try:
                services.membership_remove(
                    actor=request.user, membership=membership, request=request
                )
            except ApplicationError as exc:
                self.message_user(request, exc.message, messages.ERROR)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "user",
        "key_prefix",
        "status",
        "created_at",
        "expires_at",
        "last_used_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username", "key_prefix")
    readonly_fields = (
        "user",
        "name",
        "key_prefix",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    exclude = ("key_hash",)
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tokens are created by their owners, who alone see the secret

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False  # revoke instead, so the record stays

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = 0
        for token in queryset:
            if token.revoked_at is None:
                services.api_token_revoke(actor=request.user, token=token, request=request)
                count += 1
        self.message_user(request, f"Revoked {count} token(s).")


# Django's user admin, plus lifting a sign-in lockout (apps/squads/signin.py).
admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class StudioUserAdmin(UserAdmin):
    actions = ["unlock_signin"]

    @admin.action(description="Unlock sign-in of selected users (lockout after failed sign-ins)")
    def unlock_signin(self, request: HttpRequest, queryset: QuerySet) -> None:
        try:
            for user in queryset:
                signin.signin_unlock(
                    actor=request.user, username=user.get_username(), request=request
                )
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        self.message_user(request, f"Unlocked sign-in of {queryset.count()} user(s).")
