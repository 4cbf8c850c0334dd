"""gpu-queue tasks (routed by the `workers.` prefix). Thin: take ids, call a service.

Reliability: late ack + reject-on-worker-lost (studio.celery) bring back a job whose
worker process died; a sweeper thread in every worker requeues batch and fine-tune
jobs whose heartbeat went stale (a killed worker on the filesystem broker, or a Redis message
that would only come back after the visibility timeout). The services are
idempotent, so a job that runs twice writes each row once.
"""

import logging
import threading

from celery import shared_task
from celery.signals import worker_ready

logger = logging.getLogger(__name__)


@shared_task(name="workers.evals.run", acks_late=True, max_retries=0)
def run_eval(run_id: int) -> None:
    from apps.evals.services import eval_run_execute

    eval_run_execute(run_id=run_id)


def _sweep_once() -> None:
    try:
        from apps.evals.services import eval_runs_recover

        requeued = eval_runs_recover()
        if requeued:
            logger.warning("requeued stale eval runs: %s", requeued)
    except Exception:
        logger.exception("eval run sweeper failed")


def _sweep_forever(interval: float, stop: threading.Event) -> None:
    from django.db import close_old_connections

    while True:
        try:
            _sweep_once()
        finally:
            close_old_connections()
        if stop.wait(interval):
            return


@worker_ready.connect
def start_sweeper(sender: object = None, **kwargs: object) -> None:
    from apps.generation.services import STALE_AFTER

    interval = max(STALE_AFTER.total_seconds() / 2, 1.0)
    stop = threading.Event()
    thread = threading.Thread(
        target=_sweep_forever, args=(interval, stop), name="job-sweeper", daemon=True
    )
    thread.start()
