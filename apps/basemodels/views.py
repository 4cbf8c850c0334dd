"""The registry page: every signed-in user sees the registered models (size, context,
licence, manifest); staff also see which targets and adapters use each, and register
models from the same page (the same service as the API)."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from apps.basemodels import selectors, services
from apps.basemodels.models import BaseModelVersion
from apps.core.exceptions import ApplicationError
from apps.core.views import form_error

FORM_FIELDS = ("name", "source_kind", "source", "revision", "licence", "notes", "chat_template")


def _context(request: HttpRequest, form: dict[str, str], error: Any = None) -> dict[str, Any]:
    models = list(selectors.base_model_list())
    staff = request.user.is_staff
    rows = [
        {
            "model": m,
            "versions": list(m.versions.all()),
            "usage": selectors.base_model_usage(m) if staff else None,
        }
        for m in models
    ]
    return {
        "rows": rows,
        "staff": staff,
        "form": form,
        "error": error,
        "source_kinds": [
            (k, label)
            for k, label in BaseModelVersion.SourceKind.choices
            if k != BaseModelVersion.SourceKind.PACKAGE
        ],
    }


@login_required
@require_http_methods(["GET", "POST"])
def base_model_list(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        form = dict.fromkeys(FORM_FIELDS, "") | {"source_kind": "folder"}
        return render(request, "basemodels/list.html", _context(request, form))
    form = {name: request.POST.get(name, "") for name in FORM_FIELDS}
    try:
        services.base_model_register(actor=request.user, request=request, **form)
    except ApplicationError as exc:
        context = _context(request, form, form_error(exc))
        return render(request, "basemodels/list.html", context, status=exc.status_code)
    return redirect("basemodels:list")
