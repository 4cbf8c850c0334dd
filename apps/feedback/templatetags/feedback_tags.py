from collections.abc import Sequence
from typing import Any

from django import template

from apps.feedback.selectors import open_alerts_for_squads

register = template.Library()


@register.simple_tag
def open_alerts(nav_squads: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The banner's open drift alerts of the squads in the navigation bar (the squads the
    user can see, read once by apps.squads.context_processors.navigation); no query when
    the per-squad cache is warm."""
    return open_alerts_for_squads([item["squad"] for item in nav_squads or []])
