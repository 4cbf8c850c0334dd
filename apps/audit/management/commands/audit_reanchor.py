"""Acknowledge audit events a bug broke (see the README's 'Audit log' section)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.checkpoints import CheckpointRefused
from apps.audit.services import chain_reanchor, checkpoint_anchors, default_checkpoint_source
from apps.core.exceptions import ApplicationError


class Command(BaseCommand):
    help = (
        "Re-anchor events whose content no longer matches their hash because of a bug "
        "(not tampering): recorded as a signed, audited audit.chain_reanchored event with "
        "the old head, then checkpointed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("sequences", nargs="+", type=int, metavar="SEQUENCE")
        parser.add_argument("--staff", required=True, help="Username of the staff member doing it")
        parser.add_argument("--reason", required=True, help="The bug, with its issue reference")
        parser.add_argument(
            "--checkpoints",
            metavar="PATH|URL",
            help="Signed checkpoints the chain must still agree with (default: the "
            "configured checkpoint file when present).",
        )

    def handle(self, *args: object, **options: object) -> None:
        user = get_user_model().objects.filter(username=options["staff"]).first()
        if user is None:
            raise CommandError(f"No user named '{options['staff']}'.")
        source = options["checkpoints"] or default_checkpoint_source()
        try:
            anchors = checkpoint_anchors(str(source)) if source else []
            event = chain_reanchor(
                actor=user,
                sequences=list(options["sequences"]),  # type: ignore[arg-type]
                reason=str(options["reason"]),
                anchors=anchors,
            )
        except (ApplicationError, CheckpointRefused) as exc:
            raise CommandError(str(exc)) from exc
        head = event.data["old_head"]
        self.stdout.write(
            f"re-anchored {', '.join(str(r['sequence']) for r in event.data['rows'])} "
            f"as event {event.sequence} (old head {head['sequence']} {head['hash']})"
        )
