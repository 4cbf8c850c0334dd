from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.exceptions import ApplicationError
from apps.squads.models import Squad
from apps.squads.selectors import squad_get_for_user
from apps.webhooks import selectors, services
from apps.webhooks.events import SUBSCRIBABLE
from apps.webhooks.models import Webhook


def _form(data: Any) -> dict[str, Any]:
    return {
        "url": data.get("url", ""),
        "description": data.get("description", ""),
        "events": data.getlist("events"),
        "enabled": data.get("enabled") == "on",
    }


def _list_context(request: HttpRequest, squad: Squad, **extra: Any) -> dict[str, Any]:
    return {
        "squad": squad,
        "webhooks": selectors.webhook_list_for_user(user=request.user, squad=squad),
        "all_events": SUBSCRIBABLE,
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
def webhook_list(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's webhooks and the form to add one (the secret is shown once, here)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    if request.method == "GET":
        context = _list_context(request, squad_obj, form={"events": [], "enabled": True})
        return render(request, "webhooks/list.html", context)
    form = _form(request.POST)
    status = 201
    try:
        webhook, secret = services.webhook_create(
            actor=request.user, squad=squad_obj, request=request, **form
        )
        extra = {
            "created": {"webhook": webhook, "secret": secret},
            "form": {"events": [], "enabled": True},
        }
    except ApplicationError as exc:
        extra, status = {"error": exc, "form": form}, exc.status_code
    page = "webhooks/list.html#webhooks" if request.htmx else "webhooks/list.html"
    return render(request, page, _list_context(request, squad_obj, **extra), status=status)


def _webhook(request: HttpRequest, squad: str, webhook_id: int) -> Webhook:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    return selectors.webhook_get_for_user(user=request.user, squad=squad_obj, webhook_id=webhook_id)


def _detail_context(request: HttpRequest, webhook: Webhook, **extra: Any) -> dict[str, Any]:
    return {
        "squad": webhook.squad,
        "webhook": webhook,
        "all_events": SUBSCRIBABLE,
        "deliveries": selectors.delivery_list_for_user(user=request.user, webhook=webhook),
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
def webhook_detail(request: HttpRequest, squad: str, webhook_id: int) -> HttpResponse:
    """Settings form and the delivery log; POST saves the settings."""
    webhook = _webhook(request, squad, webhook_id)
    extra: dict[str, Any] = {}
    status = 200
    if request.method == "POST":
        try:
            webhook = services.webhook_update(
                actor=request.user, webhook=webhook, request=request, **_form(request.POST)
            )
            extra["saved"] = True
        except ApplicationError as exc:
            extra, status = {"error": exc, "form": _form(request.POST)}, exc.status_code
    page = "webhooks/detail.html#settings" if request.htmx else "webhooks/detail.html"
    return render(request, page, _detail_context(request, webhook, **extra), status=status)


@login_required
@require_GET
def delivery_log(request: HttpRequest, squad: str, webhook_id: int) -> HttpResponse:
    webhook = _webhook(request, squad, webhook_id)
    return render(request, "webhooks/detail.html#log", _detail_context(request, webhook))


@login_required
@require_POST
def webhook_test_send(request: HttpRequest, squad: str, webhook_id: int) -> HttpResponse:
    """Queue a webhook.test event; answers with the delivery log showing it."""
    webhook = _webhook(request, squad, webhook_id)
    extra: dict[str, Any] = {}
    status = 200
    try:
        extra["queued"] = services.webhook_test_send(
            actor=request.user, webhook=webhook, request=request
        )
    except ApplicationError as exc:
        extra["log_error"], status = exc, exc.status_code
    if not request.htmx and status == 200:
        return redirect("webhooks:detail", squad=squad, webhook_id=webhook.pk)
    page = "webhooks/detail.html#log" if request.htmx else "webhooks/detail.html"
    return render(request, page, _detail_context(request, webhook, **extra), status=status)


@login_required
@require_POST
def delivery_redeliver(
    request: HttpRequest, squad: str, webhook_id: int, delivery_id: int
) -> HttpResponse:
    webhook = _webhook(request, squad, webhook_id)
    extra: dict[str, Any] = {}
    status = 200
    try:
        delivery = selectors.delivery_get_for_user(
            user=request.user, webhook=webhook, delivery_id=delivery_id
        )
        extra["queued"] = services.delivery_redeliver(
            actor=request.user, delivery=delivery, request=request
        )
    except ApplicationError as exc:
        extra["log_error"], status = exc, exc.status_code
    if not request.htmx and status == 200:
        return redirect("webhooks:detail", squad=squad, webhook_id=webhook.pk)
    page = "webhooks/detail.html#log" if request.htmx else "webhooks/detail.html"
    return render(request, page, _detail_context(request, webhook, **extra), status=status)


@login_required
@require_POST
def webhook_rotate(request: HttpRequest, squad: str, webhook_id: int) -> HttpResponse:
    """A new signing secret, shown once on the page this answers with."""
    webhook, secret = services.webhook_secret_rotate(
        actor=request.user, webhook=_webhook(request, squad, webhook_id), request=request
    )
    page = "webhooks/detail.html#settings" if request.htmx else "webhooks/detail.html"
    return render(request, page, _detail_context(request, webhook, rotated_secret=secret))


@login_required
@require_POST
def webhook_delete(request: HttpRequest, squad: str, webhook_id: int) -> HttpResponse:
    services.webhook_delete(
        actor=request.user, webhook=_webhook(request, squad, webhook_id), request=request
    )
    return redirect("webhooks:list", squad=squad)
