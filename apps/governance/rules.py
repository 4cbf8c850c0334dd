"""The shape of a governance policy's rules, their defaults and their validation."""

from typing import Any

from apps.core.exceptions import ValidationFailed
from apps.governance import pii

OFF, FLAG, REDACT, BLOCK = "off", "flag", "redact", "block"
ACTIONS = (OFF, FLAG, REDACT, BLOCK)
MAX_TERMS = 500
MAX_TERM_LENGTH = 100
MAX_INPUT_CHARS = 1_000_000
MAX_OUTPUT_TOKENS = 32_768

# A squad without a policy version is checked under these: PII is flagged, nothing else.
DEFAULT_RULES: dict[str, Any] = {
    "pii": {kind: FLAG for kind in pii.TYPES},
    "blocked_terms": [],
    "allowed_topics": [],
    "whole_word": True,
    "case_sensitive": False,
    "max_input_chars": None,
    "max_output_tokens": None,
    "output_require_schema": False,
    "output_pii": True,
    "output_blocked_terms": True,
}
_BOOLS = (
    "whole_word",
    "case_sensitive",
    "output_require_schema",
    "output_pii",
    "output_blocked_terms",
)


def _terms(value: Any, field: str, errors: list[dict[str, str]]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        errors.append({"field": field, "message": "must be a list of strings"})
        return []
    terms = []
    for i, term in enumerate(value):
        term = " ".join(term.split())
        if not term:
            continue
        if len(term) > MAX_TERM_LENGTH:
            errors.append(
                {"field": f"{field}[{i}]", "message": f"longer than {MAX_TERM_LENGTH} characters"}
            )
        elif term not in terms:
            terms.append(term)
    if len(terms) > MAX_TERMS:
        errors.append({"field": field, "message": f"{len(terms)} terms; the limit is {MAX_TERMS}"})
    return terms


def _limit(value: Any, field: str, top: int, errors: list[dict[str, str]]) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        errors.append({"field": field, "message": f"must be empty or a whole number 1 to {top}"})
        return None
    return value


def clean_rules(raw: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every problem reported at once (`errors[i].field`)."""
    errors: list[dict[str, str]] = []
    unknown = sorted(set(raw) - set(DEFAULT_RULES))
    for key in unknown:
        errors.append({"field": key, "message": "unknown rule"})
    rules = {**DEFAULT_RULES, **{k: v for k, v in raw.items() if k in DEFAULT_RULES}}
    given_pii = rules["pii"] if isinstance(rules["pii"], dict) else {}
    if not isinstance(rules["pii"], dict):
        errors.append({"field": "pii", "message": "must map PII types to actions"})
    actions = {}
    for kind in sorted(set(given_pii) - set(pii.TYPES)):
        errors.append(
            {"field": f"pii.{kind}", "message": f"unknown PII type; use {', '.join(pii.TYPES)}"}
        )
    for kind in pii.TYPES:
        action = given_pii.get(kind, DEFAULT_RULES["pii"][kind])
        if action not in ACTIONS:
            errors.append(
                {"field": f"pii.{kind}", "message": f"action must be one of {', '.join(ACTIONS)}"}
            )
        actions[kind] = action
    rules["pii"] = actions
    rules["blocked_terms"] = _terms(rules["blocked_terms"], "blocked_terms", errors)
    rules["allowed_topics"] = _terms(rules["allowed_topics"], "allowed_topics", errors)
    for key in _BOOLS:
        if not isinstance(rules[key], bool):
            errors.append({"field": key, "message": "must be true or false"})
    rules["max_input_chars"] = _limit(
        rules["max_input_chars"], "max_input_chars", MAX_INPUT_CHARS, errors
    )
    rules["max_output_tokens"] = _limit(
        rules["max_output_tokens"], "max_output_tokens", MAX_OUTPUT_TOKENS, errors
    )
    if errors:
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise ValidationFailed(
            f"The policy has {len(errors)} problem(s): {summary}",
            field=errors[0]["field"],
            extra=errors,
        )
    return rules
