"""Recompute a review queue's dashboard statistics and item counters from its annotations."""

from django.core.management.base import BaseCommand, CommandError

from apps.reviews.models import ReviewQueue
from apps.reviews.services.queues import review_queue_stats_rebuild


class Command(BaseCommand):
    help = "Rebuild a review queue's statistics from the Annotation table: SQUAD QUEUE (slugs)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("squad", help="squad slug")
        parser.add_argument("queue", help="review queue slug")

    def handle(self, *args: object, squad: str, queue: str, **options: object) -> None:
        found = ReviewQueue.objects.filter(squad__slug=squad, slug=queue).first()
        if found is None:
            raise CommandError(f"No review queue '{queue}' in squad '{squad}'.")
        result = review_queue_stats_rebuild(queue=found)
        self.stdout.write(
            f"{squad}/{queue}: {result.stats['items']} items, "
            f"{result.stats['annotations']} annotations; statistics "
            f"{'corrected' if result.stats_changed else 'unchanged'}, "
            f"{result.items_corrected} item(s) corrected."
        )
