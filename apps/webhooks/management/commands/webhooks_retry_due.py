from django.core.management.base import BaseCommand

from apps.webhooks.delivery import deliveries_retry_due


class Command(BaseCommand):
    help = (
        "Queue webhook deliveries whose attempt is overdue by more than a minute (their task "
        "was lost). Safe to run often, e.g. from cron; workers also do it every sweep."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--limit", type=int, default=500)

    def handle(self, *args, limit: int, **options) -> None:
        ids = deliveries_retry_due(limit=limit)
        self.stdout.write(f"Queued {len(ids)} overdue webhook deliveries.")
