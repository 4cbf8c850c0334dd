"""Re-encrypt every webhook signing secret with the first key of
STUDIO_WEBHOOK_SECRET_KEYS: run after putting a new key first, before dropping the old."""

from django.core.management.base import BaseCommand

from apps.webhooks.services import webhook_secrets_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt webhook signing secrets with the first STUDIO_WEBHOOK_SECRET_KEYS key."

    def handle(self, *args: object, **options: object) -> None:
        count = webhook_secrets_reencrypt()
        self.stdout.write(f"Re-encrypted the signing secrets of {count} webhook(s).")
