"""HTML views of a squad's model targets: the list (every member), and the create and
edit form (those who may manage targets, MANAGE_TARGETS): a local target names a ready
base model of the registry and optionally an approved adapter trained on it (the form
offers only those; htmx swaps the adapter choice when the base model changes), a remote
one an OpenAI-compatible server. Each view parses the form and calls one service of
apps.generation.services, the same the API calls; an error the user can fix is shown on
the form, naming the field."""

from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from apps.core.exceptions import ApplicationError, NotFound, ValidationFailed
from apps.core.validation import parse_json
from apps.core.views import form_error, parse_int, partial_template
from apps.finetune import selectors as finetune_selectors
from apps.generation import selectors, services
from apps.generation.models import ModelTarget
from apps.squads.access import has_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_TARGETS
from apps.squads.selectors import squad_get_for_user

FORM = "generation/target_form.html"
TEXT_FIELDS = (
    "name",
    "kind",
    "description",
    "base_model",
    "adapter",
    "base_url",
    "remote_model",
    "token_env",
    "adapter_id",
    "context_length",
    "price_input_per_1k",
    "price_output_per_1k",
    "default_params",
)


@login_required
@require_GET
def target_list(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's own targets and the global ones, with base model and adapter."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    targets = selectors.model_target_list_for_user(user=request.user, squad=squad_obj)
    return render(
        request,
        "generation/target_list.html",
        {
            "squad": squad_obj,
            "targets": list(targets.select_related("lora_adapter")),
            "can_manage": has_squad_permission(request.user, squad_obj, MANAGE_TARGETS),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def target_new(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    options = selectors.target_form_options(user=request.user, squad=squad_obj)
    if request.method == "GET":
        form = {name: "" for name in TEXT_FIELDS} | {
            "kind": request.GET.get("kind", "local"),
            "base_model": request.GET.get("base_model") or _first_base(options),
            "default_params": "{}",
        }
        return _form(request, squad_obj, options, form, target=None)
    form = {name: request.POST.get(name, "") for name in TEXT_FIELDS}
    try:
        fields, adapter = _parse(request, squad_obj, form)
        target = services.model_target_create(
            actor=request.user,
            squad=squad_obj,
            name=form["name"],
            kind=form["kind"],
            adapter=adapter,
            request=request,
            **fields,
        )
    except ApplicationError as exc:
        return _form(request, squad_obj, options, form, target=None, error=form_error(exc))
    return redirect(f"{_list_url(squad)}#target-{target.name}")


@login_required
@require_http_methods(["GET", "POST"])
def target_edit(request: HttpRequest, squad: str, name: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    target = selectors.model_target_get_for_user(user=request.user, squad=squad_obj, name=name)
    options = selectors.target_form_options(user=request.user, squad=squad_obj)
    if request.method == "GET":
        form = _current(target) | {
            "base_model": request.GET.get("base_model") or target.base_model,
        }
        return _form(request, squad_obj, options, form, target=target)
    form = {name: request.POST.get(name, "") for name in TEXT_FIELDS}
    form["name"], form["kind"] = target.name, target.kind  # neither changes
    form["enabled"] = "on" if request.POST.get("enabled") == "on" else ""
    try:
        fields, adapter = _parse(request, squad_obj, form)
        target = services.model_target_update(
            actor=request.user,
            target=target,
            adapter=adapter,
            enabled=bool(form["enabled"]),
            request=request,
            **fields,
        )
    except ApplicationError as exc:
        return _form(request, squad_obj, options, form, target=target, error=form_error(exc))
    return redirect(f"{_list_url(squad)}#target-{target.name}")


def _list_url(squad: str) -> str:
    from django.urls import reverse

    return reverse("generation:target_list", args=[squad])


def _first_base(options: selectors.TargetFormOptions) -> str:
    return options.bases[0].model.name if options.bases else ""


def _current(target: ModelTarget) -> dict[str, str]:
    import json

    return {
        "name": target.name,
        "kind": target.kind,
        "description": target.description,
        "base_model": target.base_model,
        "adapter": str(target.lora_adapter_id or ""),
        "base_url": target.base_url,
        "remote_model": target.remote_model,
        "token_env": target.token_env,
        "adapter_id": target.adapter_id,
        "context_length": str(target.context_length),
        "price_input_per_1k": _decimal(target.price_input_per_1k),
        "price_output_per_1k": _decimal(target.price_output_per_1k),
        "default_params": json.dumps(target.default_params or {}),
        "enabled": "on" if target.enabled else "",
    }


def _decimal(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _parse(request: HttpRequest, squad: Squad, form: dict[str, str]) -> tuple[dict, Any]:
    """The service's fields from the form, and the chosen adapter (or None)."""
    local = form["kind"] == ModelTarget.Kind.LOCAL
    fields: dict[str, Any] = {
        "description": form["description"],
        "base_model": form["base_model"] if local else "",
        "base_url": "" if local else form["base_url"],
        "remote_model": "" if local else form["remote_model"],
        "token_env": "" if local else form["token_env"],
        "adapter_id": "" if local else form["adapter_id"],
        "context_length": parse_int(form["context_length"], field="context_length"),
        "price_input_per_1k": form["price_input_per_1k"] or "0",
        "price_output_per_1k": form["price_output_per_1k"] or "0",
        "default_params": parse_json(
            form["default_params"].strip() or "{}",
            field="default_params",
            label="Default parameters",
        ),
    }
    adapter = None
    adapter_id = parse_int(form["adapter"], field="adapter", minimum=1) if local else None
    if adapter_id is not None:
        try:
            adapter = finetune_selectors.adapter_get_for_user(
                user=request.user, squad=squad, adapter_id=adapter_id
            )
        except NotFound as exc:
            raise ValidationFailed(exc.message, field="adapter") from exc
    return fields, adapter


def _form(
    request: HttpRequest,
    squad: Squad,
    options: selectors.TargetFormOptions,
    form: dict[str, str],
    *,
    target: ModelTarget | None,
    error: ApplicationError | None = None,
) -> HttpResponse:
    context = {
        "squad": squad,
        "target": target,
        "form": form,
        "error": error,
        "bases": options.bases,
        "adapters": options.adapters_for(form.get("base_model", "")),
        "chosen_adapter": form.get("adapter", ""),
    }
    template = FORM
    if request.method == "GET" and request.htmx and request.htmx.target == "adapter-field":
        template = partial_template(request, FORM, "adapter-field")
    return render(request, template, context, status=error.status_code if error else 200)
