"""Admin console for the reviews app. Every change goes through the services, so the same
permission checks hold (a staff member who is not allowed sees the reason as a message)
and audit events are written."""

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect

from apps.core.exceptions import ApplicationError
from apps.reviews.models import (
    Annotation,
    ApprovalPolicy,
    ReviewComment,
    ReviewDecision,
    ReviewExport,
    ReviewItem,
    ReviewQueue,
    ReviewRequest,
)
from apps.reviews.services import approvals as approval_services
from apps.reviews.services import queues as queue_services

# --- Part A: approving prompt versions -------------------------------------------------------


class ApprovalPolicyForm(forms.ModelForm):
    protected_labels = forms.CharField(
        required=False, help_text="Comma-separated label names, e.g. production, canary"
    )

    class Meta:
        model = ApprovalPolicy
        fields = (
            "squad",
            "required_approvals",
            "changes_block",
            "threads_block",
            "min_eval_pass_rate",
        )

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            labels = self.instance.squad.protected_labels or []
            self.fields["protected_labels"].initial = ", ".join(labels)


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(admin.ModelAdmin):
    form = ApprovalPolicyForm
    list_display = ("squad", "required_approvals", "changes_block", "version", "updated_at")
    readonly_fields = ("version", "updated_at", "updated_by")

    def get_readonly_fields(self, request: HttpRequest, obj: ApprovalPolicy | None = None):  # type: ignore[no-untyped-def]
        return (*self.readonly_fields, "squad") if obj else self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        data = form.cleaned_data
        labels = [s.strip() for s in (data.get("protected_labels") or "").split(",") if s.strip()]
        policy = approval_services.approval_policy_update(
            actor=request.user,
            squad=obj.squad,
            required_approvals=data["required_approvals"],
            protected_labels=labels,
            changes_block=data["changes_block"],
            threads_block=data["threads_block"],
            min_eval_pass_rate=data["min_eval_pass_rate"],
            request=request,
        )
        obj.pk = policy.pk

    def changeform_view(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().changeform_view(request, *args, **kwargs)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


class DecisionInline(admin.TabularInline):
    model = ReviewDecision
    fields = ("reviewer", "verdict", "comment", "roles", "is_current", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ReviewRequest)
class ReviewRequestAdmin(admin.ModelAdmin):
    list_display = ("pk", "template", "version", "state", "opened_by", "created_at")
    list_filter = ("state", "squad")
    search_fields = ("template__slug", "note")
    list_select_related = ("template", "version__template", "opened_by")
    inlines = [DecisionInline]
    actions = ["withdraw"]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Withdraw the selected review requests")
    def withdraw(self, request: HttpRequest, queryset: QuerySet[ReviewRequest]) -> None:
        done = 0
        for review in queryset.select_related("squad", "template", "version"):
            try:
                approval_services.review_withdraw(
                    actor=request.user, review=review, request=request
                )
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"#{review.pk}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"Withdrew {done} review request(s).", messages.SUCCESS)


@admin.register(ReviewComment)
class ReviewCommentAdmin(admin.ModelAdmin):
    list_display = ("pk", "version", "author", "parent", "resolved_at", "created_at")
    list_filter = ("squad",)
    search_fields = ("body",)

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


# --- end of Part A ----------------------------------------------------------------------------


# --- Part B: output review queues (read-only; changes go through the API and UI) ------------


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ReviewQueue)
class ReviewQueueAdmin(ReadOnlyAdmin):
    list_display = ("name", "squad", "slug", "overlap", "created_at", "archived_at")
    list_filter = ("squad",)
    search_fields = ("name", "slug")
    list_select_related = ("squad",)
    actions = ["rebuild_stats", "archive"]

    @admin.action(description="Rebuild statistics from the annotations")
    def rebuild_stats(self, request: HttpRequest, queryset: QuerySet[ReviewQueue]) -> None:
        for queue in queryset:
            result = queue_services.review_queue_stats_rebuild(queue=queue)
            self.message_user(
                request,
                f"{queue.slug}: statistics {'corrected' if result.stats_changed else 'unchanged'}"
                f", {result.items_corrected} item(s) corrected.",
                messages.SUCCESS,
            )

    @admin.action(description="Archive the selected queues")
    def archive(self, request: HttpRequest, queryset: QuerySet[ReviewQueue]) -> None:
        for queue in queryset.select_related("squad"):
            try:
                queue_services.review_queue_update(
                    actor=request.user, queue=queue, archived=True, request=request
                )
            except ApplicationError as exc:
                self.message_user(request, f"{queue.slug}: {exc.message}", messages.ERROR)


@admin.register(ReviewItem)
class ReviewItemAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "queue",
        "source",
        "claims",
        "annotation_count",
        "approvals",
        "disagreement",
        "adjudicated_verdict",
    )
    list_filter = ("disagreement", "source", "queue")
    list_select_related = ("queue",)
    show_full_result_count = False  # no COUNT over a 100,000-item queue per page


@admin.register(Annotation)
class AnnotationAdmin(ReadOnlyAdmin):
    list_display = ("pk", "item", "reviewer", "verdict", "edit_distance", "updated_at")
    list_filter = ("verdict", "queue")
    list_select_related = ("item", "reviewer")
    show_full_result_count = False


@admin.register(ReviewExport)
class ReviewExportAdmin(ReadOnlyAdmin):
    list_display = ("pk", "queue", "row_count", "sha256", "created_by", "created_at")
    list_select_related = ("queue", "created_by")
