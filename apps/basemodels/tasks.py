"""The registration task (default queue): read, check and hash a model's files."""

from celery import shared_task

from apps.core.queues import Queue


@shared_task(
    name="basemodels.register",
    studio_queue=Queue.DEFAULT.value,
    acks_late=True,
    max_retries=0,
    time_limit=3 * 3600,  # hashing tens of GB, or converting a GGUF file
)
def register_base_model(version_id: int) -> None:
    from apps.basemodels.services import base_model_registration_run

    base_model_registration_run(version_id=version_id)
