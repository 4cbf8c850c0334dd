from celery import shared_task


# Default queue (studio.celery routes only workers.* to gpu). No Celery retries: the
# service schedules its own backoff and records every attempt.
@shared_task(
    name="apps.webhooks.tasks.deliver",
    acks_late=True,
    max_retries=0,
    soft_time_limit=120,
    time_limit=150,
)
def deliver(delivery_id: int) -> None:
    from apps.webhooks.delivery import delivery_attempt

    delivery_attempt(delivery_id=delivery_id)
