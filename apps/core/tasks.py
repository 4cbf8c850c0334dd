"""The sweeper every worker runs on a thread: one recovery pass over every registered
job kind (apps.core.jobs.recover), then overdue webhook deliveries, then a signed audit
checkpoint when one is due, every half of the stale threshold."""

import logging
import threading

from celery.signals import worker_ready
from django.conf import settings

logger = logging.getLogger(__name__)


def sweep_once() -> None:
    from apps.core.jobs import recover
    from apps.webhooks.delivery import deliveries_retry_due

    try:
        for kind, (requeued, failed) in recover().items():
            if requeued:
                logger.warning("requeued stale %s jobs: %s", kind, requeued)
            if failed:
                logger.warning("failed %s jobs that lost too many workers: %s", kind, failed)
    except Exception:
        logger.exception("job sweeper failed")
    try:
        queued = deliveries_retry_due()
        if queued:
            logger.warning("queued overdue webhook deliveries: %s", queued)
    except Exception:
        logger.exception("webhook delivery sweeper failed")
    try:
        from apps.audit.services import checkpoint_emit_if_due

        checkpoint_emit_if_due()
    except Exception:
        logger.exception("audit checkpoint failed")


def _sweep_forever(interval: float, stop: threading.Event) -> None:
    from django.db import close_old_connections

    while True:
        try:
            sweep_once()
        finally:
            close_old_connections()
        if stop.wait(interval):
            return


@worker_ready.connect
def start_sweeper(sender: object = None, **kwargs: object) -> None:
    interval = max(settings.STUDIO_JOB_STALE_SECONDS / 2, 0.5)
    thread = threading.Thread(
        target=_sweep_forever, args=(interval, threading.Event()), name="job-sweeper", daemon=True
    )
    thread.start()
