"""The review counts of the navigation bar (apps.squads.context_processors.navigation)."""

from functools import cached_property

from django.contrib.auth.models import AbstractBaseUser

from apps.reviews.selectors.approvals import inbox_counts_for_user, notification_unread_count


class NavReviews:
    """Requests waiting for the user and their unread notifications, one query each, read
    only when a template shows them (htmx partials that do not cost nothing). The roles
    come from the memberships the navigation has already read."""

    def __init__(self, user: AbstractBaseUser, roles_by_squad: dict[int, list[str]]) -> None:
        self.user = user
        self.roles_by_squad = roles_by_squad

    @cached_property
    def by_squad(self) -> dict[int, int]:
        """Squad id -> requests waiting for the user there (the squad navigation's count)."""
        return inbox_counts_for_user(user=self.user, roles_by_squad=self.roles_by_squad)

    @cached_property
    def inbox(self) -> int:
        return sum(self.by_squad.values())

    @cached_property
    def unread(self) -> int:
        return notification_unread_count(user=self.user)
