import hashlib
import json
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from apps.audit.services import audit_log
from apps.core.exceptions import Conflict, ValidationFailed
from apps.core.validation import clean_slug
from apps.prompts import contracts, runtime
from apps.prompts.models import LABEL_MAX, SLUG_MAX, Label, LabelMove, PromptTemplate, PromptVersion
from apps.reviews.gate import check_label_move
from apps.squads.access import require_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import EDIT_PROMPTS, MOVE_PROTECTED_LABELS
from apps.webhooks import emitters as webhooks

User = AbstractBaseUser
DEFAULT_MODEL: dict[str, Any] = {
    "target": "local",
    "temperature": 0.7,
    "top_p": 1.0,
    "max_new_tokens": 256,
    "stop": [],
    "seed": None,
}
MAX_NEW_TOKENS = 32_768
MAX_TAGS = 20


# --- validation -------------------------------------------------------------------


def _clean_slug(value: str, *, field: str, limit: int) -> str:
    return clean_slug(value, field=field, limit=limit)


def _clean_tags(tags: list[str] | None) -> list[str]:
    tags = tags or []
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise ValidationFailed(f"Tags must be a list of at most {MAX_TAGS}.", field="tags")
    clean = [_clean_slug(str(t), field="tags", limit=40) for t in tags]
    return sorted(set(clean))


def _number(value: Any, *, field: str, low: float, high: float, integer: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not (low <= value <= high):
        kind = "a whole number" if integer else "a number"
        raise ValidationFailed(f"{field} must be {kind} from {low} to {high}.", field=field)
    return value


def clean_model_settings(model: dict[str, Any] | None, report: contracts.ContractReport) -> dict:
    """Fill defaults and check each parameter; problems go to the report."""
    model = {**DEFAULT_MODEL, **(model or {})}
    unknown = set(model) - set(DEFAULT_MODEL)
    if unknown:
        report.error("model", f"unknown parameter(s): {', '.join(sorted(unknown))}")
    checks = [
        ("temperature", 0.0, 2.0, False),
        ("top_p", 0.0, 1.0, False),
        ("max_new_tokens", 1, MAX_NEW_TOKENS, True),
    ]
    for key, low, high, integer in checks:
        try:
            _number(model[key], field=f"model.{key}", low=low, high=high, integer=integer)
        except ValidationFailed as exc:
            report.error(f"model.{key}", exc.message)
    target = model["target"]
    if not isinstance(target, str) or not target.strip() or len(target) > 100:
        report.error("model.target", "must name a model target (1–100 characters)")
    stop = model["stop"]
    if (
        not isinstance(stop, list)
        or len(stop) > 8
        or not all(isinstance(s, str) and 0 < len(s) <= 100 for s in stop)
    ):
        report.error("model.stop", "must be a list of at most 8 non-empty strings")
    seed = model["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        report.error("model.seed", "must be a whole number or null")
    return model


def check_content(
    *,
    messages: Any,
    input_schema: Any,
    output_schema: Any = None,
    output_format: str = "text",
    model: dict[str, Any] | None = None,
    fallback_target: str = "",
) -> tuple[dict[str, Any], contracts.ContractReport]:
    """Validate a version's content without saving; returns the normalised content."""
    report = contracts.ContractReport()
    indexed_messages = contracts.check_messages(messages, report)
    clean_messages = [message for _, message in indexed_messages]
    input_ok = contracts.check_json_schema(input_schema, "input_schema", report)
    if input_ok and input_schema.get("type") != "object":
        report.error("input_schema", 'the input schema must have "type": "object"')
        input_ok = False
    if output_format not in PromptVersion.OutputFormat.values:
        report.error("output_format", f"must be 'text' or 'json' (got {output_format!r})")
    if output_schema is not None:
        contracts.check_json_schema(output_schema, "output_schema", report)
        if output_format != PromptVersion.OutputFormat.JSON:
            report.error("output_schema", "an output schema needs output_format 'json'")
    clean_model = clean_model_settings(model, report)
    fallback_target = (fallback_target or "").strip()
    if len(fallback_target) > 100:
        report.error("fallback_target", "must be at most 100 characters")
    if fallback_target and fallback_target == clean_model.get("target"):
        report.error("fallback_target", "must differ from the model target")
    contracts.check_templates(indexed_messages, input_schema if input_ok else None, report)
    content = {
        "messages": clean_messages,
        "input_schema": input_schema,
        "output_schema": output_schema,
        "output_format": output_format,
        "model_settings": clean_model,
        "fallback_target": fallback_target,
    }
    return content, report


def content_hash(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- templates and versions ----------------------------------------------------------


@transaction.atomic
def prompt_template_create(
    *,
    actor: User,
    squad: Squad,
    slug: str,
    description: str = "",
    tags: list[str] | None = None,
    first_version: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> PromptTemplate:
    """Create a template; with `first_version` (prompt_version_create's content keywords)
    version 1 is saved in the same transaction, so a refused version leaves nothing behind."""
    require_squad_permission(actor, squad, EDIT_PROMPTS)
    slug = _clean_slug(slug, field="slug", limit=SLUG_MAX)
    description = (description or "").strip()
    if len(description) > 2000:
        raise ValidationFailed("Description is longer than 2000 characters.", field="description")
    tags = _clean_tags(tags)
    if PromptTemplate.objects.filter(squad=squad, slug=slug).exists():
        raise Conflict(f"A prompt '{slug}' already exists in squad '{squad.slug}'.", field="slug")
    template = PromptTemplate.objects.create(
        squad=squad, slug=slug, description=description, tags=tags, created_by=actor
    )
    audit_log(
        actor=actor,
        action="prompt.template_created",
        squad=squad,
        target=template,
        data={"slug": slug, "tags": tags},
        request=request,
    )
    if first_version is not None:
        prompt_version_create(actor=actor, template=template, request=request, **first_version)
        template.refresh_from_db()
    return template


@transaction.atomic
def prompt_template_update(
    *,
    actor: User,
    template: PromptTemplate,
    description: str | None = None,
    tags: list[str] | None = None,
    request: HttpRequest | None = None,
) -> PromptTemplate:
    require_squad_permission(actor, template.squad, EDIT_PROMPTS)
    changes: dict[str, Any] = {}
    if description is not None and description.strip() != template.description:
        if len(description.strip()) > 2000:
            raise ValidationFailed(
                "Description is longer than 2000 characters.", field="description"
            )
        changes["description"] = [template.description, description.strip()]
        template.description = description.strip()
    if tags is not None:
        clean = _clean_tags(tags)
        if clean != template.tags:
            changes["tags"] = [template.tags, clean]
            template.tags = clean
    if changes:
        template.save(update_fields=list(changes))
        audit_log(
            actor=actor,
            action="prompt.template_updated",
            squad=template.squad,
            target=template,
            data={"changes": changes},
            request=request,
        )
    return template


@transaction.atomic
def prompt_version_create(
    *,
    actor: User,
    template: PromptTemplate,
    messages: Any,
    input_schema: Any,
    commit_message: str,
    output_schema: Any = None,
    output_format: str = "text",
    model: dict[str, Any] | None = None,
    fallback_target: str = "",
    parent_number: int | None = None,
    request: HttpRequest | None = None,
) -> PromptVersion:
    """Save the next version. Refused with every problem found (syntax errors with line and
    column, undeclared variables, invalid schemas) and when nothing changed since the latest."""
    require_squad_permission(actor, template.squad, EDIT_PROMPTS)
    # Lock the template so concurrent saves get consecutive numbers.
    template = PromptTemplate.objects.select_for_update().get(pk=template.pk)
    commit_message = (commit_message or "").strip()
    if not commit_message:
        raise ValidationFailed("Say what changed in a commit message.", field="commit_message")
    if len(commit_message) > 500:
        raise ValidationFailed(
            "Commit message is longer than 500 characters.", field="commit_message"
        )
    content, report = check_content(
        messages=messages,
        input_schema=input_schema,
        output_schema=output_schema,
        output_format=output_format,
        model=model,
        fallback_target=fallback_target,
    )
    report.raise_if_errors()
    digest = content_hash(content)
    latest = template.latest_version
    if latest is not None and latest.content_hash == digest:
        raise Conflict(
            f"Nothing changed: the content is identical to version {latest.number}.",
            field="messages",
        )
    parent = latest
    if parent_number is not None:
        parent = template.versions.filter(number=parent_number).first()
        if parent is None:
            raise ValidationFailed(
                f"Parent version {parent_number} does not exist.", field="parent_number"
            )
    version = PromptVersion.objects.create(
        template=template,
        number=(latest.number + 1) if latest else 1,
        author=actor,
        parent=parent,
        commit_message=commit_message,
        content_hash=digest,
        warnings=report.warnings,
        **content,
    )
    template.latest_version = version
    template.save(update_fields=["latest_version"])
    audit_log(
        actor=actor,
        action="prompt.version_created",
        squad=template.squad,
        target=version,
        data={
            "template": template.slug,
            "number": version.number,
            "content_hash": digest,
            "commit_message": commit_message,
            "parent": parent.number if parent else None,
        },
        request=request,
    )
    webhooks.version_created(version=version, actor=actor)
    return version


# --- labels --------------------------------------------------------------------------


@transaction.atomic
def label_move(
    *,
    actor: User,
    template: PromptTemplate,
    name: str,
    version: PromptVersion,
    note: str = "",
    request: HttpRequest | None = None,
) -> Label:
    """Point a label at a version. Every label move goes through here — UI, API, admin and
    commands — so this is where protected labels are gated."""
    squad = template.squad
    require_squad_permission(actor, squad, EDIT_PROMPTS)
    name = _clean_slug(name, field="label", limit=LABEL_MAX)
    # Read from the row, not the cached squad (web processes memo it for a second): the
    # gate must see a label protected the moment the policy change commits.
    squad.protected_labels = (
        Squad.objects.filter(pk=squad.pk).values_list("protected_labels", flat=True).first() or []
    )
    protected = name in squad.protected_labels
    if protected:
        require_squad_permission(actor, squad, MOVE_PROTECTED_LABELS)
    if version.template_id != template.pk:
        raise ValidationFailed(
            f"Version {version.number} does not belong to prompt '{template.slug}'.",
            field="version",
        )
    # A protected label may only point at a version approved under the squad's policy.
    check_label_move(squad=squad, label=name, version=version)
    label = Label.objects.select_for_update().filter(template=template, name=name).first()
    previous = label.version if label else None
    if previous is not None and previous.pk == version.pk:
        raise Conflict(
            f"Label '{name}' already points at version {version.number}.", field="version"
        )
    if label is None:
        label = Label(template=template, name=name)
    label.version = version
    label.updated_by = actor
    label.updated_at = timezone.now()
    label.save()
    LabelMove.objects.create(
        label=label, from_version=previous, to_version=version, actor=actor, note=note[:500]
    )
    audit_log(
        actor=actor,
        action="prompt.label_moved",
        squad=squad,
        target=label,
        data={
            "template": template.slug,
            "label": name,
            "from": previous.number if previous else None,
            "to": version.number,
            "protected": protected,
            "note": note[:500],
        },
        request=request,
    )
    webhooks.label_moved(label=label, previous=previous, protected=protected, actor=actor)
    runtime.forget_label(squad_id=squad.pk, template_slug=template.slug, label=name)
    return label
