from celery import shared_task


# Routed to the default queue (studio.celery routes only workers.* to gpu).
@shared_task(
    name="audit.chain_verify",
    max_retries=0,
    soft_time_limit=3600,
    time_limit=3700,
)
def audit_chain_verify(verification_id: int) -> None:
    from apps.audit.services import chain_verification_run

    chain_verification_run(verification_id=verification_id)
