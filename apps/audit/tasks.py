from celery import shared_task

from studio.celery import Queue


@shared_task(
    name="audit.chain_verify",
    queue=Queue.DEFAULT.value,
    max_retries=0,
    soft_time_limit=3600,
    time_limit=3700,
)
def audit_chain_verify(verification_id: int) -> None:
    from apps.audit.services import chain_verification_run

    chain_verification_run(verification_id=verification_id)
