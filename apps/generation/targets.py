"""Model target resolution and validation."""

import fnmatch
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from apps.basemodels.selectors import DEFAULT_BASE_MODEL, base_model_ready
from apps.core.exceptions import NotFound, ValidationFailed
from apps.generation.models import ModelTarget

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
TEXT_LIMITS = {
    "description": 500,
    "base_model": 200,
    "base_url": 500,
    "remote_model": 200,
    "token_env": 100,
    "adapter_id": 200,
}
PRICE_LIMIT = Decimal(1_000_000)  # the column holds 12 digits, 6 after the point


def token_env_allowed(name: str) -> bool:
    """Whether a target may name this environment variable as its token: only those
    the operator set aside for targets (STUDIO_TARGET_TOKEN_ENVS, patterns such as
    `STUDIO_TARGET_TOKEN_*`). Any other name would let a squad owner send the server's
    own secrets (SECRET_KEY, DATABASE_URL, cloud credentials) to a URL they choose."""
    patterns = [p.strip() for p in settings.STUDIO_TARGET_TOKEN_ENVS.split(",") if p.strip()]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def token_env_refusal(name: str) -> str:
    return (
        f"token_env '{name[:100]}' is not one of the variables set aside for target tokens "
        f"(STUDIO_TARGET_TOKEN_ENVS: {settings.STUDIO_TARGET_TOKEN_ENVS or 'none'}); ask "
        "the operator to put the token in such a variable."
    )


def target_resolve(*, squad_id: int, name: str) -> ModelTarget:
    """The squad's own target of that name, else the global one."""
    enabled = ModelTarget.objects.filter(name=name, enabled=True)
    target = enabled.filter(squad_id=squad_id).first() or enabled.filter(squad__isnull=True).first()
    if target is None:
        raise NotFound(f"No enabled model target named '{name}'.", field="target")
    return target


def clean_target_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a target's fields; secrets are never accepted, only the NAME of a variable."""
    kind = data.get("kind")
    if kind not in ModelTarget.Kind.values:
        raise ValidationFailed("kind must be 'local' or 'remote'.", field="kind")
    for field, limit in TEXT_LIMITS.items():
        value = data.get(field)
        if value is None:
            continue
        if not isinstance(value, str) or "\x00" in value:
            raise ValidationFailed(f"{field} must be text.", field=field)
        if len(value) > limit:
            raise ValidationFailed(
                f"{field} is {len(value)} characters long; the limit is {limit}.", field=field
            )
        data[field] = value.strip()
    model_context = None
    if kind == ModelTarget.Kind.LOCAL:
        base_model = data.get("base_model") or DEFAULT_BASE_MODEL
        if not isinstance(base_model, str):
            raise ValidationFailed(
                "base_model must be a registered model's name.", field="base_model"
            )
        # A registered model whose current version is ready (apps.basemodels).
        model_context = base_model_ready(base_model).context_length
        data["base_model"] = base_model
        for field in ("base_url", "token_env", "adapter_id", "remote_model"):
            if data.get(field):
                raise ValidationFailed(f"{field} is only for remote targets.", field=field)
    else:
        url = urlparse(data.get("base_url") or "")
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValidationFailed(
                "base_url must be an http(s) URL of the inference server.", field="base_url"
            )
        token_env = data.get("token_env") or ""
        if token_env and not ENV_NAME.match(token_env):
            raise ValidationFailed(
                "token_env is the NAME of an environment variable (like "
                "STUDIO_TARGET_TOKEN_TGI), never the token itself.",
                field="token_env",
            )
        if token_env and not token_env_allowed(token_env):
            raise ValidationFailed(token_env_refusal(token_env), field="token_env")
    for field in ("price_input_per_1k", "price_output_per_1k"):
        try:
            value = Decimal(str(data.get(field) or 0).strip())
        except InvalidOperation as exc:
            raise ValidationFailed(f"{field} must be a number.", field=field) from exc
        if not value.is_finite():
            raise ValidationFailed(f"{field} must be a number.", field=field)
        if value < 0:
            raise ValidationFailed(f"{field} must not be negative.", field=field)
        if value >= PRICE_LIMIT or value != value.quantize(Decimal("0.000001")):
            raise ValidationFailed(
                f"{field} must be below {PRICE_LIMIT} with at most 6 decimal places.",
                field=field,
            )
        data[field] = value
    context_length = data.get("context_length")
    if context_length is None:  # 0 is a value, and refused below
        context_length = model_context or 8192
    if (
        isinstance(context_length, bool)
        or not isinstance(context_length, int)
        or not 256 <= context_length <= 1_048_576
    ):
        raise ValidationFailed("context_length must be 256 to 1048576.", field="context_length")
    if model_context and context_length > model_context:
        raise ValidationFailed(
            f"context_length {context_length} is longer than base model "
            f"'{data['base_model']}''s context of {model_context} tokens.",
            field="context_length",
        )
    data["context_length"] = context_length
    data["default_params"] = clean_default_params(data.get("default_params"))
    return data


DEFAULT_PARAM_KEYS = ("temperature", "top_p", "max_new_tokens", "stop", "seed")


def clean_default_params(params: Any) -> dict[str, Any]:
    """A target's default generation parameters: a subset of a prompt version's model
    settings, each checked by the same rules (apps.prompts.services)."""
    from apps.prompts import contracts
    from apps.prompts.services import clean_model_settings

    params = params or {}
    if not isinstance(params, dict):
        raise ValidationFailed("default_params must be an object.", field="default_params")
    unknown = sorted(set(params) - set(DEFAULT_PARAM_KEYS))
    if unknown:
        raise ValidationFailed(
            f"default_params: unknown parameter(s) {', '.join(k[:40] for k in unknown[:5])}; "
            f"a target's defaults may set {', '.join(DEFAULT_PARAM_KEYS)}.",
            field="default_params",
        )
    report = contracts.ContractReport()
    clean_model_settings({**params, "target": "default"}, report)
    if report.errors:
        first = report.errors[0]
        where = first["where"].removeprefix("model.")
        raise ValidationFailed(
            f"default_params.{where} {first['message'].removeprefix(first['where'] + ' ')}",
            field="default_params",
        )
    return params
