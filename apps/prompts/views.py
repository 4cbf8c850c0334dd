"""HTML views for prompts: list, editor with live preview, template page, versions, diff,
labels. Each view parses the request, calls the prompts services/selectors (the same ones
the API calls) and renders a page, or one of its partials when htmx asks."""

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from apps.core.exceptions import ApplicationError, NotFound, ValidationFailed
from apps.core.validation import parse_json
from apps.core.views import parse_int, partial_template
from apps.prompts import selectors, services
from apps.prompts.contracts import (
    ROLES,
    ContractReport,
    RenderFailed,
    render_messages,
)
from apps.prompts.diff import version_diff
from apps.prompts.models import PromptTemplate, PromptVersion
from apps.prompts.variables import (
    example_variables,
    sample_file,
    schema_key,
    variable_fields,
)
from apps.squads.access import has_squad_permission, require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import EDIT_PROMPTS, MOVE_PROTECTED_LABELS, RUN_EVALS
from apps.squads.selectors import squad_get_for_user

FILTERS = ("q", "tag", "label", "author")
MODEL_FIELDS = ("target", "temperature", "top_p", "max_new_tokens", "stop", "seed")
JSON_FIELDS = {"input_schema": "Input schema", "output_schema": "Output schema"}
DEFAULT_INPUT_SCHEMA = {"type": "object", "properties": {}, "required": []}
ROW_WHERE = re.compile(r"^messages\[(\d+)\]")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _commas(raw: str) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


# --- the editor's form ----------------------------------------------------------------


@dataclass
class EditorForm:
    """What the editor shows: the raw text of every field, so a refused save or a
    preview keeps exactly what the user typed."""

    fields: dict[str, str]
    rows: list[dict[str, Any]]


@dataclass
class ParsedContent:
    content: dict[str, Any]
    variables: Any
    report: ContractReport = field(default_factory=ContractReport)


def _row(index: int, role: str, content: str, *, key: str | None = None) -> dict[str, Any]:
    return {"id": key or str(index), "number": index + 1, "role": role, "content": content}


def _form_from_post(data: QueryDict) -> EditorForm:
    names = (
        "slug",
        "description",
        "tags",
        "input_schema",
        "output_schema",
        "output_format",
        *MODEL_FIELDS,
        "fallback_target",
        "commit_message",
        "variables",
        "parent_number",
    )
    # Browsers submit textarea newlines as CRLF; store what the user sees.
    contents = [c.replace("\r\n", "\n") for c in data.getlist("message_content")]
    roles = data.getlist("message_role")
    rows = [_row(i, r, c) for i, (r, c) in enumerate(zip(roles, contents, strict=False))]
    return EditorForm(fields={n: data.get(n, "") for n in names}, rows=rows)


def _form_from_version(version: PromptVersion | None) -> EditorForm:
    if version is None:
        model = services.DEFAULT_MODEL
        return EditorForm(
            fields={
                "input_schema": _pretty(DEFAULT_INPUT_SCHEMA),
                "output_schema": "",
                "output_format": PromptVersion.OutputFormat.TEXT,
                **{k: "" if model[k] is None else str(model[k]) for k in MODEL_FIELDS},
                "stop": "",
                "variables": "{}",
            },
            rows=[_row(0, "system", ""), _row(1, "user", "")],
        )
    model = {**services.DEFAULT_MODEL, **version.model_settings}
    fields = {
        "input_schema": _pretty(version.input_schema),
        "output_schema": _pretty(version.output_schema) if version.output_schema else "",
        "output_format": version.output_format,
        **{k: "" if model[k] is None else str(model[k]) for k in MODEL_FIELDS},
        "stop": ", ".join(model["stop"] or []),
        "fallback_target": version.fallback_target,
        "variables": _pretty(example_variables(version.input_schema).value),
        "parent_number": str(version.number),
    }
    rows = [_row(i, m["role"], m["content"]) for i, m in enumerate(version.messages)]
    return EditorForm(fields=fields, rows=rows)


def _parse(form: EditorForm) -> ParsedContent:
    """Turn the form's text into check_content's keywords. Text that is not even JSON or a
    number is reported here, per field, in the same shape as the contract errors."""
    report = ContractReport()
    values = form.fields

    def json_value(name: str, label: str, default: Any) -> Any:
        raw = values.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse_json(raw, field=name, label=label)
        except ValidationFailed as exc:
            report.error(name, exc.message, **(exc.extra or {}))
            return default

    def number(name: str, *, integer: bool) -> None:
        raw = values.get(name, "").strip()
        if not raw:
            model.pop(name)  # the service's default applies
            return
        try:
            model[name] = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            report.error(f"model.{name}", f"must be {kind} (got '{raw}')")

    input_schema = json_value("input_schema", "Input schema", DEFAULT_INPUT_SCHEMA)
    output_schema = json_value("output_schema", "Output schema", None)
    variables = json_value("variables", "Variables", {})
    if not isinstance(variables, dict):
        report.error("variables", 'Variables must be a JSON object, like {"name": "Ada"}')
    model: dict[str, Any] = {
        "target": values.get("target", "").strip(),
        "temperature": None,
        "top_p": None,
        "max_new_tokens": None,
        "stop": _commas(values.get("stop", "")),
        "seed": None,
    }
    number("temperature", integer=False)
    number("top_p", integer=False)
    number("max_new_tokens", integer=True)
    number("seed", integer=True)
    content = {
        "messages": [{"role": r["role"], "content": r["content"]} for r in form.rows],
        "input_schema": input_schema,
        "output_schema": output_schema,
        "output_format": values.get("output_format", "text"),
        "model": model,
        "fallback_target": values.get("fallback_target", ""),
    }
    return ParsedContent(content=content, variables=variables, report=report)


def _preview(parsed: ParsedContent) -> dict[str, Any]:
    """Check the content (nothing is saved); when it holds, render it with the variables."""
    if parsed.report.errors:
        return {"errors": parsed.report.errors, "warnings": []}
    content, report = services.check_content(**parsed.content)
    preview: dict[str, Any] = {
        "errors": report.errors,
        "warnings": report.warnings,
        "variables_used": sorted(report.variables),
    }
    if report.errors:
        return preview
    try:
        preview["rendered"] = render_messages(
            content["messages"], content["input_schema"], parsed.variables
        )
    except RenderFailed as exc:
        preview["render_errors"] = exc.extra or [{"path": exc.field, "message": exc.message}]
    return preview


def _errors_of(exc: ApplicationError) -> list[dict[str, Any]]:
    if isinstance(exc.extra, list) and all(isinstance(e, dict) for e in exc.extra):
        return [{"where": e.get("where", e.get("path", exc.field)), **e} for e in exc.extra]
    return [{"where": exc.field or "", "message": exc.message}]


def _place_errors(form: EditorForm, errors: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Errors by form field (message rows get theirs on the row) for inline display."""
    by_field: dict[str, list[str]] = {}
    for error in errors:
        where = error.get("where") or ""
        row = ROW_WHERE.match(where)
        if row and int(row.group(1)) < len(form.rows):
            form.rows[int(row.group(1))].setdefault("errors", []).append(error["message"])
            continue
        head = re.split(r"[.\[]", where, maxsplit=1)[0]
        if head == "model" and "." in where:
            head = where.split(".")[1]
        by_field.setdefault(head or "form", []).append(error["message"])
    return by_field


def _json_or_none(raw: str) -> Any:
    try:
        return parse_json(raw or "null", field="input_schema")
    except ValidationFailed:
        return None


def _variables_form_context(fields: dict[str, str]) -> dict[str, Any]:
    """The editor's variables form, built from the input schema as typed."""
    schema = _json_or_none(fields.get("input_schema", ""))
    if not isinstance(schema, dict):
        schema = DEFAULT_INPUT_SCHEMA
    return {
        "variable_fields": variable_fields(schema, _json_or_none(fields.get("variables", ""))),
        "variables_key": schema_key(schema),
    }


def _editor_context(
    squad: Squad,
    form: EditorForm,
    *,
    template: PromptTemplate | None,
    preview: dict[str, Any] | None,
    error: ApplicationError | None = None,
) -> dict[str, Any]:
    errors = _errors_of(error) if error else []
    if template is None:
        action = reverse("prompts:new", args=[squad.slug])
    else:
        action = reverse("prompts:edit", args=[squad.slug, template.slug])
    return {
        **_variables_form_context(form.fields),
        "squad": squad,
        "template": template,
        "form": form.fields,
        "rows": form.rows,
        "roles": ROLES,
        "output_formats": PromptVersion.OutputFormat.values,
        "action": action,
        "preview": preview,
        "error": error,
        "errors": errors,
        "field_errors": _place_errors(form, errors),
    }


def _saved(request: HttpRequest, url: str) -> HttpResponse:
    # A 302 would be followed inside the XHR and swapped into the form.
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


# --- views ------------------------------------------------------------------------------


@login_required
@require_GET
def prompt_list(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    filters = {k: request.GET.get(k, "").strip() for k in FILTERS}
    prompts = selectors.prompt_template_list_for_user(
        user=request.user, squad=squad_obj, **{k: v or None for k, v in filters.items()}
    )
    context = {
        "squad": squad_obj,
        "filters": filters,
        "filtered": any(filters.values()),
        "prompts": prompts,
        "can_edit": has_squad_permission(request.user, squad_obj, EDIT_PROMPTS),
    }
    return render(request, partial_template(request, "prompts/list.html", "results"), context)


@login_required
@require_http_methods(["GET", "POST"])
def prompt_new(request: HttpRequest, squad: str) -> HttpResponse:
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    require_squad_permission(request.user, squad_obj, EDIT_PROMPTS)
    if request.method == "GET":
        form = _form_from_version(None)
        return render(
            request,
            "prompts/editor.html",
            _editor_context(squad_obj, form, template=None, preview=None),
        )
    form = _form_from_post(request.POST)
    parsed = _parse(form)
    try:
        parsed.report.raise_if_errors()
        template = services.prompt_template_create(
            actor=request.user,
            squad=squad_obj,
            slug=form.fields["slug"],
            description=form.fields["description"],
            tags=_commas(form.fields["tags"]),
            first_version={**parsed.content, "commit_message": form.fields["commit_message"]},
            request=request,
        )
    except ApplicationError as exc:
        context = _editor_context(
            squad_obj, form, template=None, preview=_preview(parsed), error=exc
        )
        page = partial_template(request, "prompts/editor.html", "editor-form")
        return render(request, page, context, status=exc.status_code)
    messages.success(request, f"Saved {template.slug} v1.")
    return _saved(request, reverse("prompts:detail", args=[squad, template.slug]))


@login_required
@require_http_methods(["GET", "POST"])
def prompt_edit(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    template = selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )
    require_squad_permission(request.user, template.squad, EDIT_PROMPTS)
    if request.method == "GET":
        number = parse_int(request.GET.get("from"), field="from", label="'from'")
        base = (
            selectors.prompt_version_get(user=request.user, template=template, number=number)
            if number is not None
            else template.latest_version
        )
        form = _form_from_version(base)
        preview = _preview(_parse(form)) if base else None
        context = _editor_context(template.squad, form, template=template, preview=preview)
        return render(request, "prompts/editor.html", context)
    form = _form_from_post(request.POST)
    parsed = _parse(form)
    try:
        parent = parse_int(form.fields["parent_number"], field="parent_number", label="Parent")
        parsed.report.raise_if_errors()
        version = services.prompt_version_create(
            actor=request.user,
            template=template,
            commit_message=form.fields["commit_message"],
            parent_number=parent,
            request=request,
            **parsed.content,
        )
    except ApplicationError as exc:
        context = _editor_context(
            template.squad, form, template=template, preview=_preview(parsed), error=exc
        )
        page = partial_template(request, "prompts/editor.html", "editor-form")
        return render(request, page, context, status=exc.status_code)
    messages.success(request, f"Saved v{version.number}.")
    return _saved(request, reverse("prompts:detail", args=[squad, template.slug]))


@login_required
@require_POST
def preview(request: HttpRequest, squad: str) -> HttpResponse:
    """The editor's live preview. Writes nothing."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    form = _form_from_post(request.POST)
    parsed = _parse(form)
    context: dict[str, Any] = {"squad": squad_obj, "preview": _preview(parsed)}
    # The input schema changed since the variables form was built: rebuild it.
    fields = _variables_form_context(form.fields)
    if fields["variables_key"] != request.POST.get("variables_schema_key"):
        context.update(fields, variables_oob=True)
    return render(request, "prompts/editor.html#preview", context)


@login_required
@require_GET
def message_row(request: HttpRequest, squad: str) -> HttpResponse:
    """A blank message row for the editor (or, with ?remove, nothing: the row's remove
    button swaps itself away, and the preview refreshes after the swap)."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    if "remove" in request.GET:
        return trigger_client_event(HttpResponse(""), "messages-changed", after="swap")
    count = len(request.GET.getlist("message_role"))
    # Rows may have been removed meanwhile: a fresh key keeps element ids unique.
    row = _row(count, "user", "", key=f"{count}-{uuid.uuid4().hex[:6]}")
    return render(
        request,
        "prompts/editor.html#message-row",
        {"squad": squad_obj, "row": row, "roles": ROLES},
    )


def _detail_context(request: HttpRequest, template: PromptTemplate) -> dict[str, Any]:
    squad = template.squad
    versions = list(selectors.prompt_version_list(user=request.user, template=template))
    return {
        "squad": squad,
        "template": template,
        "current": template.latest_version,
        "versions": versions,
        "labels": list(selectors.label_list(user=request.user, template=template)),
        "protected_labels": squad.protected_labels or [],
        "can_edit": has_squad_permission(request.user, squad, EDIT_PROMPTS),
        "can_move_protected": has_squad_permission(request.user, squad, MOVE_PROTECTED_LABELS),
        **_version_display(template.latest_version),
    }


def _version_display(version: PromptVersion | None) -> dict[str, Any]:
    if version is None:
        return {}
    return {
        "input_schema_json": _pretty(version.input_schema),
        "output_schema_json": _pretty(version.output_schema) if version.output_schema else "",
        "model_rows": [(k, json.dumps(v)) for k, v in version.model_settings.items()],
    }


@login_required
@require_GET
def prompt_detail(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    template = selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )
    return render(request, "prompts/detail.html", _detail_context(request, template))


@login_required
@require_POST
def label_move(request: HttpRequest, squad: str, slug: str, name: str = "") -> HttpResponse:
    """Point a label at a version; pointing it at an earlier one is the roll back."""
    template = selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )
    name = name or request.POST.get("name", "").strip()
    error = moved = None
    try:
        number = parse_int(request.POST.get("version"), field="version", label="Version")
        if number is None:
            raise ValidationFailed("Choose the version the label should point at.", field="version")
        version = selectors.prompt_version_get(user=request.user, template=template, number=number)
        moved = services.label_move(
            actor=request.user,
            template=template,
            name=name,
            version=version,
            note=request.POST.get("note", ""),
            request=request,
        )
    except ApplicationError as exc:
        error = exc
    if error is None and not request.htmx:
        return redirect("prompts:detail", squad=squad, slug=slug)
    context = {**_detail_context(request, template), "label_error": error, "moved": moved}
    page = partial_template(request, "prompts/detail.html", "label-moved")
    return render(request, page, context, status=error.status_code if error else 200)


@login_required
@require_GET
def version_sample(
    request: HttpRequest, squad: str, slug: str, number: int, fmt: str
) -> HttpResponse:
    """A sample batch file for a version: rows of example variables that pass its input
    schema, as JSONL or CSV."""
    if fmt not in ("jsonl", "csv"):
        raise NotFound(f"No sample as '.{fmt}': ask for .jsonl or .csv.")
    template = selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )
    version = selectors.prompt_version_get(user=request.user, template=template, number=number)
    content_type = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    response = HttpResponse(sample_file(version.input_schema, fmt), content_type=content_type)
    filename = f"{template.slug}-v{version.number}-sample.{fmt}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    cut = example_variables(version.input_schema).cut
    if cut:  # the batch page says so too, beside the links
        response["X-Sample-Cut-Short"] = json.dumps(cut)  # ASCII, no line breaks
    return response


@login_required
@require_GET
def version_detail(request: HttpRequest, squad: str, slug: str, number: int) -> HttpResponse:
    template = selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )
    version = selectors.prompt_version_get(user=request.user, template=template, number=number)
    context = {
        "squad": template.squad,
        "template": template,
        "version": version,
        "can_edit": has_squad_permission(request.user, template.squad, EDIT_PROMPTS),
        "can_run_evals": has_squad_permission(request.user, template.squad, RUN_EVALS),
        **_version_display(version),
    }
    return render(request, "prompts/version.html", context)


@login_required
@require_GET
def diff(request: HttpRequest, squad: str, slug: str) -> HttpResponse:
    template = selectors.prompt_template_get_for_user(
        user=request.user, squad_slug=squad, slug=slug
    )
    versions = list(selectors.prompt_version_list(user=request.user, template=template))
    to_number = parse_int(request.GET.get("to_version"), field="to_version", label="'to_version'")
    from_number = parse_int(
        request.GET.get("from_version"), field="from_version", label="'from_version'"
    )
    if to_number is None and versions:
        to_number = versions[0].number
    if from_number is None and to_number is not None:
        from_number = next((v.number for v in versions if v.number < to_number), to_number)
    result = None
    if from_number is not None and to_number is not None:
        old = selectors.prompt_version_get(user=request.user, template=template, number=from_number)
        new = selectors.prompt_version_get(user=request.user, template=template, number=to_number)
        result = version_diff(old, new)
        for row in result["config"]:
            row["old"], row["new"] = json.dumps(row["old"]), json.dumps(row["new"])
        result["breaking_count"] = sum(c["breaking"] for c in result["schema_changes"])
    context = {
        "squad": template.squad,
        "template": template,
        "versions": versions,
        "from_number": from_number,
        "to_number": to_number,
        "diff": result,
    }
    return render(request, partial_template(request, "prompts/diff.html", "diff-body"), context)
