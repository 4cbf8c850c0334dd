"""Lift a sign-in lockout from the command line, as a named staff user, through the same
audited service as the admin console's action."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.exceptions import ApplicationError
from apps.squads.signin import signin_unlock


class Command(BaseCommand):
    help = "Unlock sign-in: signin_unlock [--username NAME] [--ip ADDRESS] --as STAFF_USERNAME"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="", help="the locked-out username")
        parser.add_argument("--ip", default="", help="the locked-out client address")
        parser.add_argument("--as", dest="actor", required=True, help="acting staff user")

    def handle(self, *args: object, **options: object) -> None:
        actor = get_user_model().objects.filter(username=options["actor"]).first()
        if actor is None:
            raise CommandError(f"No user named '{options['actor']}'.")
        try:
            cleared = signin_unlock(
                actor=actor, username=str(options["username"]), ip_address=str(options["ip"])
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Unlocked ({cleared} lockout counter(s) cleared).")
