"""Sign the audit chain's head now and publish it (log line, checkpoint file); or print
the verifying keys, or a new key for the settings."""

import json

from django.core.management.base import BaseCommand, CommandParser

from apps.audit import checkpoints
from apps.audit.services import checkpoint_emit


class Command(BaseCommand):
    help = "Publish a signed checkpoint of the audit chain's head (see also --public-keys)."

    def add_arguments(self, parser: CommandParser) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--public-keys",
            action="store_true",
            help="Print 'id:base64' of every verifying key (STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS "
            "of an outside verifier).",
        )
        group.add_argument(
            "--new-key",
            metavar="ID",
            help="Print a new private key entry and its public half; changes nothing.",
        )

    def handle(self, *args: object, **options: object) -> None:
        if options["public_keys"]:
            for key_id, key in checkpoints.verifying_keys().items():
                self.stdout.write(checkpoints.public_key_entry(key_id, key))
            return
        if options["new_key"]:
            private, public = checkpoints.new_key_entry(str(options["new_key"]))
            self.stdout.write(f"private (STUDIO_AUDIT_CHECKPOINT_KEYS): {private}")
            self.stdout.write(f"public  (STUDIO_AUDIT_CHECKPOINT_PUBLIC_KEYS): {public}")
            return
        checkpoint = checkpoint_emit(reason="manual")
        self.stdout.write(json.dumps(checkpoint.as_dict(), sort_keys=True))
