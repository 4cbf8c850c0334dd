import json
from typing import Any

from django import template

from apps.squads.access import has_squad_permission
from apps.squads.permissions import EXPORT_EVIDENCE

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@register.inclusion_tag("evidence/_links.html", takes_context=True)
def evidence_links(context: template.Context) -> dict[str, Any]:
    """The evidence pack links on a version page, for those who may export it.
    Context: request, squad, template, version."""
    request = context["request"]
    squad = context["squad"]
    return {
        "show": has_squad_permission(request.user, squad, EXPORT_EVIDENCE),
        "squad": squad,
        "template": context["template"],
        "version": context["version"],
    }
