from django.http import HttpRequest

from apps.reviews.navigation import NavReviews
from apps.squads.selectors import memberships_of_user, squad_list_for_user


def navigation(request: HttpRequest) -> dict:
    """Squads for the navigation bar, with the user's roles in each (two queries), and the
    review counts of the Inbox and Notifications links (two more, when a page shows them)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or request.path.startswith("/admin/"):
        return {}
    memberships = memberships_of_user(user=user)
    return {
        "nav_squads": [
            {"squad": s, "membership": memberships.get(s.pk)}
            for s in squad_list_for_user(user=user)
        ],
        "nav_reviews": NavReviews(
            user, roles_by_squad={pk: m.roles for pk, m in memberships.items()}
        ),
    }
