"""Point a prompt's label at a version from the command line, as a named user, through
the same gated service as the UI, the API and the admin console."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.exceptions import ApplicationError
from apps.prompts import selectors, services


class Command(BaseCommand):
    help = "Move a label: move_label SQUAD PROMPT LABEL VERSION --as USERNAME [--note TEXT]"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("squad")
        parser.add_argument("prompt")
        parser.add_argument("label")
        parser.add_argument("version", type=int)
        parser.add_argument("--as", dest="username", required=True, help="acting user")
        parser.add_argument("--note", default="")

    def handle(self, *args: object, **options: object) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named '{options['username']}'.")
        try:
            template = selectors.prompt_template_get_for_user(
                user=user, squad_slug=str(options["squad"]), slug=str(options["prompt"])
            )
            version = selectors.prompt_version_get(
                user=user, template=template, number=int(options["version"])
            )
            services.label_move(
                actor=user,
                template=template,
                name=str(options["label"]),
                version=version,
                note=str(options["note"]),
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"{options['squad']}/{options['prompt']}@{options['label']} → version {version.number}"
        )
