"""Generation's tasks (gpu queue): single generations, and the batch job kind's wake-up
(apps.core.jobs)."""

from celery import shared_task

from apps.core.jobs import wake_task
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


run_batch_job = wake_task("generation.batch_job", Queue.GPU)
