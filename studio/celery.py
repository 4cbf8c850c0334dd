"""The Celery app. Queues are an enum; routing sends `workers.*` tasks to `gpu`.

Reliability for long GPU jobs: late acknowledgement and reject-on-worker-lost
so a killed worker's job is redelivered, prefetch 1 so a worker never holds a
second job it cannot start, and a broker visibility timeout longer than the
longest task (see settings). Job state lives in our own models.
"""

import os
from enum import StrEnum

from celery import Celery

import apps.telemetry.worker  # noqa: F401  (logging through settings.LOGGING, task ids bound)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings.base")


class Queue(StrEnum):
    DEFAULT = "default"
    GPU = "gpu"


app = Celery("studio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_default_queue=Queue.DEFAULT.value,
    task_routes={"workers.*": {"queue": Queue.GPU.value}},
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)
app.autodiscover_tasks(["apps.audit", "apps.squads", "apps.webhooks", "workers"])
