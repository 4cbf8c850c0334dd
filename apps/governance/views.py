from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from apps.core.exceptions import ApplicationError
from apps.core.http import parse_id
from apps.governance import pii, selectors, services
from apps.governance.rules import ACTIONS, DEFAULT_RULES
from apps.squads.access import has_squad_permission
from apps.squads.models import Squad
from apps.squads.permissions import MANAGE_GOVERNANCE_POLICY
from apps.squads.selectors import squad_get_for_user

BOOLS = (
    "whole_word",
    "case_sensitive",
    "output_require_schema",
    "output_pii",
    "output_blocked_terms",
)


def _lines(raw: str) -> list[str]:
    return [line.strip() for line in raw.splitlines() if line.strip()]


def _limit(raw: str) -> int | str | None:
    raw = raw.strip()
    number = parse_id(raw)
    return number if number is not None else (raw or None)


def _rules_from_form(data: Any) -> dict[str, Any]:
    return {
        # A type left out of the form keeps its default action.
        "pii": {kind: data[f"pii_{kind}"] for kind in pii.TYPES if data.get(f"pii_{kind}")},
        "blocked_terms": _lines(data.get("blocked_terms", "")),
        "allowed_topics": _lines(data.get("allowed_topics", "")),
        "max_input_chars": _limit(data.get("max_input_chars", "")),
        "max_output_tokens": _limit(data.get("max_output_tokens", "")),
        **{key: data.get(key) == "on" for key in BOOLS},
    }


def _policy_context(
    request: HttpRequest, squad: Squad, *, rules: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    policy = selectors.policy_get_for_user(user=request.user, squad=squad)
    rules = rules or (policy.rules if policy else DEFAULT_RULES)
    return {
        "squad": squad,
        "policy": policy,
        "rules": rules,
        "pii_rows": [
            {"type": kind, "label": pii.LABELS[kind], "action": rules["pii"].get(kind, "")}
            for kind in pii.TYPES
        ],
        "actions": ACTIONS,
        "blocked_terms": "\n".join(rules["blocked_terms"]),
        "allowed_topics": "\n".join(rules["allowed_topics"]),
        "versions": selectors.policy_versions_for_user(user=request.user, squad=squad)[:20],
        "can_manage": has_squad_permission(request.user, squad, MANAGE_GOVERNANCE_POLICY),
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
def policy(request: HttpRequest, squad: str) -> HttpResponse:
    """The squad's governance policy; owners and compliance leads save new versions."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    if request.method == "GET":
        return render(request, "governance/policy.html", _policy_context(request, squad_obj))
    rules = _rules_from_form(request.POST)
    try:
        services.policy_update(
            actor=request.user,
            squad=squad_obj,
            rules=rules,
            note=request.POST.get("note", ""),
            request=request,
        )
    except ApplicationError as exc:
        context = _policy_context(request, squad_obj, error=exc, form_rules=rules)
        page = "governance/policy.html#policy-form" if request.htmx else "governance/policy.html"
        return render(request, page, context, status=exc.status_code)
    if not request.htmx:
        return redirect("governance:policy", squad=squad)
    context = _policy_context(request, squad_obj, saved=True)
    return render(request, "governance/policy.html#policy-form", context)


@login_required
@require_http_methods(["GET", "POST"])
def test_bench(request: HttpRequest, squad: str) -> HttpResponse:
    """Paste text, see what the current policy finds (highlighted) and redacts."""
    squad_obj = squad_get_for_user(user=request.user, slug=squad)
    context: dict[str, Any] = {"squad": squad_obj, "text": ""}
    status = 200
    if request.method == "POST":
        context["text"] = request.POST.get("text", "")
        try:
            context["result"] = selectors.policy_test_for_user(
                user=request.user, squad=squad_obj, text=context["text"]
            )
        except ApplicationError as exc:
            context["error"], status = exc, exc.status_code
    page = "governance/test_bench.html#result" if request.htmx else "governance/test_bench.html"
    return render(request, page, context, status=status)
