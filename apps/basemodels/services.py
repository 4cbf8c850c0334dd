"""Every write of the base-model registry. Staff register and change models; the worker
task `basemodels.register` reads and hashes the files (`base_model_registration_run`);
a worker that finds a model's files changed at load time reports it
(`base_model_files_changed`). Every change is audited in the same transaction."""

import re
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from apps.audit.services import audit_log
from apps.basemodels.models import NAME_MAX, BaseModel, BaseModelVersion
from apps.core import queues
from apps.core.exceptions import Conflict, PermissionDenied, ValidationFailed
from apps.core.validation import clean_slug

REGISTER_TASK = "basemodels.register"
SOURCE_MAX = 500
TEMPLATE_MAX = 100_000
TEXT_MAX = {"licence": 200, "notes": 10_000}
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
MAX_CHECKSUMS = 1000
# What a version copies from the one before when only its licence or notes change.
FACTS = (
    "source_kind",
    "source",
    "revision",
    "status",
    "architecture",
    "model_type",
    "parameters",
    "context_length",
    "dtype",
    "hidden_size",
    "num_layers",
    "vocab_size",
    "chat_template",
    "chat_template_source",
    "expected_sha256",
    "manifest",
    "manifest_sha256",
    "registered_at",
)


def _require_staff(actor: AbstractBaseUser, what: str) -> None:
    if not getattr(actor, "is_staff", False):
        raise PermissionDenied(f"Only staff {what}.", field="base_model")


def _clean_text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be text.", field=field)
    if "\x00" in value:
        raise ValidationFailed(f"{field} must not contain NUL characters.", field=field)
    limit = TEXT_MAX.get(field, TEMPLATE_MAX)
    if len(value) > limit:
        raise ValidationFailed(
            f"{field} is {len(value)} characters long; the limit is {limit}.", field=field
        )
    return value.strip() if field != "chat_template" else value


def _clean_source(kind: str, source: Any) -> str:
    if kind not in BaseModelVersion.SourceKind.values or kind == "package":
        raise ValidationFailed(
            "source_kind must be 'folder', 'gguf' or 'hub'.", field="source_kind"
        )
    if not isinstance(source, str) or not source.strip():
        raise ValidationFailed("source must not be empty.", field="source")
    source = source.strip()
    if "\x00" in source or len(source) > SOURCE_MAX:
        raise ValidationFailed(
            f"source must be at most {SOURCE_MAX} characters, without NUL.", field="source"
        )
    if kind == "hub":
        if not HUB_ID.match(source):
            raise ValidationFailed(
                f"source '{source}' is not a hub id like 'Qwen/Qwen2.5-0.5B-Instruct'.",
                field="source",
            )
        return source
    parts = source.replace("\\", "/").split("/")
    if source.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValidationFailed(
            f"source '{source}' must be a path relative to STUDIO_MODELS_DIR, without '..'.",
            field="source",
        )
    if kind == "gguf" and not source.endswith(".gguf"):
        raise ValidationFailed("a gguf source is a .gguf file.", field="source")
    return source


def _clean_checksums(value: Any) -> dict[str, str]:
    if value in (None, {}):
        return {}
    if not isinstance(value, dict) or len(value) > MAX_CHECKSUMS:
        raise ValidationFailed(
            f"expected_sha256 must be an object of at most {MAX_CHECKSUMS} file names.",
            field="expected_sha256",
        )
    out = {}
    for name, digest in value.items():
        if not isinstance(name, str) or not FILE_NAME.match(name):
            raise ValidationFailed(
                f"expected_sha256: '{str(name)[:80]}' is not a file name.",
                field="expected_sha256",
            )
        if not isinstance(digest, str) or not SHA256.match(digest):
            raise ValidationFailed(
                f"expected_sha256.{name} must be 64 hexadecimal characters.",
                field=f"expected_sha256.{name}",
            )
        out[name] = digest.lower()
    return out


def _next_number(model: BaseModel) -> int:
    last = model.versions.order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


@transaction.atomic
def base_model_register(
    *,
    actor: AbstractBaseUser,
    name: str,
    source_kind: str,
    source: str,
    revision: str = "",
    chat_template: str = "",
    licence: str = "",
    notes: str = "",
    expected_sha256: dict[str, str] | None = None,
    request: HttpRequest | None = None,
) -> BaseModelVersion:
    """Staff only: a new version of base model `name` (created if new), queued for a
    worker to read its config, check its tokenizer and chat template and hash its files
    (`base_model_registration_run`). It is usable once `ready`."""
    _require_staff(actor, "register base models")
    name = clean_slug(name, field="name", limit=NAME_MAX)
    source = _clean_source(source_kind, source)
    revision = _clean_text(revision, "revision")[:100]
    chat_template = _clean_text(chat_template, "chat_template")
    licence = _clean_text(licence, "licence")
    notes = _clean_text(notes, "notes")
    checksums = _clean_checksums(expected_sha256)
    model, created = BaseModel.objects.select_for_update().get_or_create(
        name=name, defaults={"created_by": actor}
    )
    if not created:
        # Registering again while a registration waits is allowed (its worker may have
        # died): whichever finishes, the newest ready version is the current one.
        model = BaseModel.objects.select_for_update().get(pk=model.pk)
    version = BaseModelVersion.objects.create(
        model=model,
        number=_next_number(model),
        source_kind=source_kind,
        source=source,
        revision=revision,
        chat_template=chat_template,
        licence=licence,
        notes=notes,
        expected_sha256=checksums,
        created_by=actor,
    )
    audit_log(
        actor=actor,
        action="basemodels.registration_requested",
        target=version,
        data={
            "name": name,
            "version": version.number,
            "source_kind": source_kind,
            "source": source,
            "revision": revision,
            "chat_template_given": bool(chat_template),
            "licence": licence,
        },
        request=request,
    )
    transaction.on_commit(
        lambda: queues.send(REGISTER_TASK, version.pk, queue=queues.Queue.DEFAULT)
    )
    return version


def base_model_registration_run(*, version_id: int) -> BaseModelVersion:
    """Worker side (idempotent): read and hash a pending version's files, then mark it
    ready (and current) or refused with the reason."""
    from workers.runtime import registry

    version = BaseModelVersion.objects.select_related("model").get(pk=version_id)
    if version.status != BaseModelVersion.Status.PENDING:
        return version
    try:
        facts = registry.register(
            name=version.model.name,
            version=version.number,
            source_kind=version.source_kind,
            source=version.source,
            revision=version.revision,
            chat_template=version.chat_template,
            expected=version.expected_sha256,
        )
    except registry.RegistrationRefused as exc:
        return _finish_registration(version_id, refused=exc)
    return _finish_registration(version_id, facts=facts)


@transaction.atomic
def _finish_registration(
    version_id: int, *, facts: Any = None, refused: Exception | None = None
) -> BaseModelVersion:
    version = (
        BaseModelVersion.objects.select_for_update(of=("self",))
        .select_related("model")
        .get(pk=version_id)
    )
    if version.status != BaseModelVersion.Status.PENDING:
        return version
    model = BaseModel.objects.select_for_update().get(pk=version.model_id)
    if refused is not None:
        version.status = BaseModelVersion.Status.REFUSED
        version.refusal_reason = refused.reason
        version.refusal = str(refused)
        version.save(update_fields=["status", "refusal_reason", "refusal"])
        audit_log(
            actor=None,
            action="basemodels.registration_refused",
            target=version,
            data={
                "name": model.name,
                "version": version.number,
                "reason": refused.reason,
                "message": str(refused),
            },
        )
        return version
    for name in (
        "architecture",
        "model_type",
        "parameters",
        "context_length",
        "dtype",
        "hidden_size",
        "num_layers",
        "vocab_size",
        "chat_template_source",
        "manifest",
        "manifest_sha256",
    ):
        setattr(version, name, getattr(facts, name) or getattr(version, name))
    version.status = BaseModelVersion.Status.READY
    version.registered_at = timezone.now()
    version.save()
    current = model.current
    if current is None or current.number < version.number or current.status != "ready":
        model.current = version
        model.save(update_fields=["current"])
    audit_log(
        actor=None,
        action="basemodels.registered",
        target=version,
        data={
            "name": model.name,
            "version": version.number,
            "architecture": version.architecture,
            "parameters": version.parameters,
            "context_length": version.context_length,
            "dtype": version.dtype,
            "chat_template_source": version.chat_template_source,
            "manifest_sha256": version.manifest_sha256,
            "files": len(version.manifest),
        },
    )
    return version


@transaction.atomic
def base_model_update(
    *,
    actor: AbstractBaseUser,
    model: BaseModel,
    licence: str | None = None,
    notes: str | None = None,
    request: HttpRequest | None = None,
) -> BaseModelVersion:
    """Staff only: a new version of the current one with another licence or notes (the
    files, facts and manifest are the same)."""
    _require_staff(actor, "change base models")
    model = BaseModel.objects.select_for_update().get(pk=model.pk)
    current = model.current
    if current is None or current.status != BaseModelVersion.Status.READY:
        raise Conflict(f"Base model '{model.name}' has no ready version to change.", field="name")
    new_licence = current.licence if licence is None else _clean_text(licence, "licence")
    new_notes = current.notes if notes is None else _clean_text(notes, "notes")
    if (new_licence, new_notes) == (current.licence, current.notes):
        raise ValidationFailed("Nothing changed.", field="licence")
    version = BaseModelVersion.objects.create(
        model=model,
        number=_next_number(model),
        licence=new_licence,
        notes=new_notes,
        created_by=actor,
        **{name: getattr(current, name) for name in FACTS},
    )
    model.current = version
    model.save(update_fields=["current"])
    audit_log(
        actor=actor,
        action="basemodels.updated",
        target=version,
        data={
            "name": model.name,
            "version": version.number,
            "licence": new_licence,
            "notes_changed": new_notes != current.notes,
            "previous": current.number,
        },
        request=request,
    )
    return version


@transaction.atomic
def base_model_files_changed(*, name: str, manifest_sha256: str, problems: list[str]) -> None:
    """Worker side: the files of `name`'s registration `manifest_sha256` differ from its
    manifest at load time. Its ready versions with that manifest become `changed` (no
    target or job uses them until a staff member registers the model again); audited
    once per version."""
    versions = list(
        BaseModelVersion.objects.select_for_update()
        .select_related("model")
        .filter(
            model__name=name,
            manifest_sha256=manifest_sha256,
            status=BaseModelVersion.Status.READY,
        )
    )
    for version in versions:
        version.status = BaseModelVersion.Status.CHANGED
        version.refusal_reason = "files_changed"
        version.refusal = "; ".join(problems)[:5000]
        version.save(update_fields=["status", "refusal_reason", "refusal"])
        audit_log(
            actor=None,
            action="basemodels.files_changed",
            target=version,
            data={
                "name": name,
                "version": version.number,
                "manifest_sha256": manifest_sha256,
                "problems": problems[:20],
            },
        )
