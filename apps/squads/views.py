from datetime import UTC

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from apps.core.exceptions import ApplicationError
from apps.squads import selectors, services
from apps.squads.access import has_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import CHANGE_SQUAD, MANAGE_MEMBERS, Role


def _squad_context(request: HttpRequest, squad: Squad) -> dict:
    return {
        "squad": squad,
        "membership": selectors.memberships_of_user(user=request.user).get(squad.pk),
        "can_change": has_squad_permission(request.user, squad, CHANGE_SQUAD),
        "can_manage_members": has_squad_permission(request.user, squad, MANAGE_MEMBERS),
    }


@login_required
@require_http_methods(["GET", "POST"])
def dashboard(request: HttpRequest) -> HttpResponse:
    form = {"name": "", "slug": "", "description": ""}
    error = None
    if request.method == "POST":
        form = {k: request.POST.get(k, "") for k in form}
        try:
            squad = services.squad_create(actor=request.user, request=request, **form)
        except ApplicationError as exc:
            error = exc
        else:
            if request.htmx:
                # A 302 would be followed inside the XHR and swapped into the form.
                return HttpResponseClientRedirect(reverse("squads:detail", args=[squad.slug]))
            return redirect("squads:detail", slug=squad.slug)
    template = "squads/dashboard.html#create-form" if request.htmx else "squads/dashboard.html"
    return render(
        request,
        template,
        {"form": form, "error": error},
        status=error.status_code if error else 200,
    )


@login_required
def squad_detail(request: HttpRequest, slug: str) -> HttpResponse:
    squad = selectors.squad_get_for_user(user=request.user, slug=slug)
    members = selectors.membership_list(user=request.user, squad=squad)
    return render(
        request, "squads/detail.html", {**_squad_context(request, squad), "members": members}
    )


@login_required
@require_POST
def squad_settings(request: HttpRequest, slug: str) -> HttpResponse:
    squad = selectors.squad_get_for_user(user=request.user, slug=slug)
    error = None
    try:
        services.squad_update(
            actor=request.user,
            squad=squad,
            name=request.POST.get("name", squad.name),
            description=request.POST.get("description", squad.description),
            request=request,
        )
    except ApplicationError as exc:
        error = exc
        squad.refresh_from_db()
    return render(
        request,
        "squads/detail.html#settings-form",
        {**_squad_context(request, squad), "error": error, "saved": error is None},
        status=error.status_code if error else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def members(request: HttpRequest, slug: str) -> HttpResponse:
    squad = selectors.squad_get_for_user(user=request.user, slug=slug)
    error = None
    added = None
    add_form = {"username": "", "roles": []}
    if request.method == "POST":
        add_form = {
            "username": request.POST.get("username", "").strip(),
            "roles": request.POST.getlist("roles"),
        }
        try:
            added = services.membership_add_by_username(
                actor=request.user,
                squad=squad,
                username=add_form["username"],
                roles=add_form["roles"],
                request=request,
            )
        except ApplicationError as exc:
            error = exc
    context = {
        **_squad_context(request, squad),
        "members": selectors.membership_list(user=request.user, squad=squad),
        "roles": Role.choices,
        # The add form's error and input: kept apart from the member rows' `row_error`.
        "error": error,
        "added": added,
        "add_form": add_form if error else {"username": "", "roles": []},
    }
    template = "squads/members.html#member-section" if request.htmx else "squads/members.html"
    return render(request, template, context, status=error.status_code if error else 200)


@login_required
@require_POST
def member_update(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    squad = selectors.squad_get_for_user(user=request.user, slug=slug)
    membership = selectors.membership_get(user=request.user, squad=squad, username=username)
    error = None
    try:
        membership = services.membership_set_roles(
            actor=request.user,
            membership=membership,
            roles=request.POST.getlist("roles"),
            request=request,
        )
    except ApplicationError as exc:
        error = exc
        membership.refresh_from_db()
    return render(
        request,
        "squads/members.html#member-row",
        {
            **_squad_context(request, squad),
            "m": membership,
            "roles": Role.choices,
            "row_error": error,
        },
        status=error.status_code if error else 200,
    )


@login_required
@require_POST
def member_remove(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    squad = selectors.squad_get_for_user(user=request.user, slug=slug)
    membership = selectors.membership_get(user=request.user, squad=squad, username=username)
    try:
        services.membership_remove(actor=request.user, membership=membership, request=request)
    except ApplicationError as exc:
        return render(
            request,
            "squads/members.html#member-row",
            {
                **_squad_context(request, squad),
                "m": membership,
                "roles": Role.choices,
                "row_error": exc,
            },
            status=exc.status_code,
        )
    if request.htmx:
        return HttpResponse("")
    return redirect("squads:members", slug=squad.slug)


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    error = None
    created = None
    if request.method == "POST":
        raw_expiry = request.POST.get("expires_at", "").strip()
        try:
            expires_at = None
            if raw_expiry:
                # <input type="datetime-local"> sends no zone; read it as UTC.
                expires_at = parse_datetime(raw_expiry)
                if expires_at is None:
                    raise ApplicationError(
                        f"Expiry '{raw_expiry}' is not a date and time.", field="expires_at"
                    )
                if expires_at.tzinfo is None:
                    expires_at = expires_at.replace(tzinfo=UTC)
            token, secret = services.api_token_create(
                actor=request.user,
                name=request.POST.get("name", ""),
                expires_at=expires_at,
                request=request,
            )
            created = {"token": token, "secret": secret}
        except ApplicationError as exc:
            error = exc
    context = {
        "tokens": selectors.api_token_list_for_user(user=request.user),
        "error": error,
        "created": created,
    }
    template = "squads/tokens.html#token-section" if request.htmx else "squads/tokens.html"
    return render(request, template, context, status=error.status_code if error else 200)


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = selectors.api_token_get_for_user(user=request.user, token_id=token_id)
    services.api_token_revoke(actor=request.user, token=token, request=request)
    if request.htmx:
        return render(
            request,
            "squads/tokens.html#token-section",
            {"tokens": selectors.api_token_list_for_user(user=request.user)},
        )
    return redirect("squads:tokens")
