"""Create (or bring back) the demo squad with one user per role. Safe to run again."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.squads import services
from apps.squads.models import Membership, Squad
from apps.squads.permissions import Role

DEMO_PASSWORD = "studio-demo"
DEMO_SLUG = "demo"
DEMO_USERS: list[tuple[str, Role]] = [
    ("olivia", Role.OWNER),
    ("priya", Role.PROMPT_ENGINEER),
    ("sam", Role.SME),
    ("carmen", Role.COMPLIANCE),
    ("victor", Role.VIEWER),
]
ADMIN_USER = "admin"


class Command(BaseCommand):
    help = "Create the demo squad with one user per role and a staff admin, and print the logins."

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        with transaction.atomic():
            users = {}
            for username, _role in DEMO_USERS:
                user, created = User.objects.get_or_create(username=username)
                if created:
                    user.set_password(DEMO_PASSWORD)
                    user.save()
                users[username] = user
            admin, created = User.objects.get_or_create(
                username=ADMIN_USER, defaults={"is_staff": True, "is_superuser": True}
            )
            if created:
                admin.set_password(DEMO_PASSWORD)
                admin.save()
            owner = users[DEMO_USERS[0][0]]
            squad = Squad.objects.filter(slug=DEMO_SLUG).first()
            if squad is None:
                squad = services.squad_create(
                    actor=owner,
                    name="Demo squad",
                    slug=DEMO_SLUG,
                    description="A demo squad with one member per role.",
                )
            for username, role in DEMO_USERS:
                membership = Membership.objects.filter(squad=squad, user=users[username]).first()
                if membership is None:
                    services.membership_add(
                        actor=owner, squad=squad, user=users[username], roles=[role]
                    )
                elif role.value not in membership.roles:
                    services.membership_set_roles(
                        actor=owner, membership=membership, roles=[*membership.roles, role]
                    )
        self.stdout.write(
            f"Demo squad '{DEMO_SLUG}' is ready. Logins (password '{DEMO_PASSWORD}'):"
        )
        for username, role in DEMO_USERS:
            self.stdout.write(f"  {username:<8} {role.label}")
        self.stdout.write(f"  {ADMIN_USER:<8} staff superuser (admin console at /admin/)")
