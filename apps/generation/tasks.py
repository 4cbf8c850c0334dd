"""Generation's tasks (gpu queue). Thin: take ids, call a service."""

from celery import shared_task
from django.conf import settings

from apps.core.queues import Queue


@shared_task(
    name="generation.run",
    studio_queue=Queue.GPU.value,
    acks_late=True,
    max_retries=0,
    time_limit=900,
)
def run_generation(generation_id: int) -> None:
    from apps.generation.services import generation_run

    generation_run(generation_id=generation_id)


@shared_task(
    name="generation.batch_job",
    studio_queue=Queue.GPU.value,
    acks_late=True,
    max_retries=0,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def run_batch_job(job_id: int) -> None:
    """Wakes a GPU worker: it runs the next GPU job in fair-share order (apps.core.jobs),
    which need not be `job_id`."""
    from apps.core.jobs import run_next

    run_next(Queue.GPU)
