"""Gauges computed when Prometheus scrapes, not kept in any process: how many messages
wait in each Celery queue, and how many output review items wait for reviewers."""

import os
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

import structlog
from django.conf import settings
from django.db.models import Count, F, Q
from prometheus_client.core import GaugeMetricFamily, Metric

from studio.celery import Queue

# kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in sibling lists.
_REDIS_SEP = "\x06\x16"
_REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
_redis_clients: dict[str, object] = {}
logger = structlog.get_logger("studio.metrics")


def _redis_depths(url: str, queues: Iterable[str]) -> dict[str, int]:
    import redis

    client = _redis_clients.get(url)
    if client is None:
        client = _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=2)
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    prefix = options.get("global_keyprefix", "")
    sep = options.get("sep", _REDIS_SEP)
    steps = options.get("priority_steps", _REDIS_PRIORITY_STEPS)
    names = list(queues)
    with client.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
        for name in names:
            for step in steps:
                pipe.llen(f"{prefix}{name}{sep}{step}" if step else f"{prefix}{name}")
        sizes = pipe.execute()
    per_queue = len(steps)
    return {name: sum(sizes[i * per_queue : (i + 1) * per_queue]) for i, name in enumerate(names)}


def _filesystem_depths(folder: str, queues: Iterable[str]) -> dict[str, int]:
    # kombu's filesystem transport: one file "<ms>_<uuid>.<queue>.msg" per waiting message.
    depths = dict.fromkeys(queues, 0)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return depths
    for filename in names:
        queue = filename.partition(".")[2].removesuffix(".msg")
        if filename.endswith(".msg") and queue in depths:
            depths[queue] += 1
    return depths


def queue_depths(queues: Iterable[str] = tuple(q.value for q in Queue)) -> dict[str, int] | None:
    """Waiting messages per queue on the configured broker; None for a broker this cannot
    read (neither Redis nor kombu's filesystem transport)."""
    url = settings.CELERY_BROKER_URL
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        return _redis_depths(url, queues)
    if scheme == "filesystem":
        folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
        return _filesystem_depths(folder, queues)
    return None


class QueueDepthCollector:
    def __init__(self, queues: Iterable[str] = tuple(q.value for q in Queue)) -> None:
        self.queues = tuple(queues)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("studio_celery_queue_depth", "", labels=["queue"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "studio_celery_queue_depth",
            "Messages waiting in each Celery queue (not yet taken by a worker).",
            labels=["queue"],
        )
        try:
            depths = queue_depths(self.queues)
        except Exception:  # broker down: the scrape's other metrics matter most right now
            logger.warning("celery queue depth unavailable", exc_info=True)
            depths = None
        for queue, depth in (depths or {}).items():
            family.add_metric([queue], depth)
        yield family


class ReviewBacklogCollector:
    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("studio_review_backlog", "", labels=["squad", "queue"])

    def collect(self) -> Iterator[Metric]:
        from apps.reviews.models import ReviewQueue

        family = GaugeMetricFamily(
            "studio_review_backlog",
            "Output review items still short of the queue's overlap (k) annotations, per "
            "live review queue (labels: squad slug, queue slug).",
            labels=["squad", "queue"],
        )
        rows = (
            ReviewQueue.objects.filter(archived_at__isnull=True)
            .annotate(pending=Count("items", filter=Q(items__annotation_count__lt=F("overlap"))))
            .values_list("squad__slug", "slug", "pending")
        )
        for squad, queue, pending in rows:
            family.add_metric([squad, queue], pending)
        yield family
