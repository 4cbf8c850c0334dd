"""{% squad_nav %}: the squad navigation of the page's squad (apps/squads/navigation.py)."""

from typing import Any

from django import template

from apps.squads.models import Squad
from apps.squads.navigation import squad_navigation
from apps.squads.selectors import squad_by_slug

register = template.Library()


def _page_squad(context: template.Context) -> Squad | None:
    """The squad the page is about: the view's `squad`, else the one its URL names."""
    squad = context.get("squad")
    if isinstance(squad, Squad):
        return squad
    match = getattr(context.get("request"), "resolver_match", None)
    if match is None:
        return None
    # Most squad pages name it `squad`; the squads and audit apps' own pages `slug`.
    slug = match.kwargs.get("squad")
    if slug is None and match.namespace in ("squads", "audit"):
        slug = match.kwargs.get("slug")
    return squad_by_slug(slug) if isinstance(slug, str) else None


@register.inclusion_tag("squads/_squad_nav.html", takes_context=True)
def squad_nav(context: template.Context) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    squad = _page_squad(context) if user is not None and user.is_authenticated else None
    if squad is None:
        return {"nav_areas": []}
    reviews = context.get("nav_reviews")
    return {
        "nav_squad": squad,
        "nav_areas": squad_navigation(
            user=user,
            squad=squad,
            path=request.path,
            reviews_by_squad=reviews.by_squad if reviews is not None else None,
        ),
    }
