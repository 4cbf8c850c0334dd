"""The Celery app. Queues are an enum (apps.core.queues); each task declares its queue
(`default` unless it says `gpu`) and each app owns its tasks (apps/<app>/tasks.py).
A task that states no time limit gets STUDIO_DEFAULT_TASK_TIME_LIMIT
(CELERY_TASK_TIME_LIMIT in settings); GPU tasks state STUDIO_GPU_TASK_TIME_LIMIT.

Reliability for long GPU jobs: late acknowledgement and reject-on-worker-lost
so a killed worker's job is redelivered, prefetch 1 so a worker never holds a
second job it cannot start, and a broker visibility timeout longer than the
longest task (see settings). Job state lives in our own models.
"""

import os

from celery import Celery

import apps.telemetry.worker  # noqa: F401  (logging through settings.LOGGING, task ids bound)
from apps.core.queues import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings.base")


def route(name, args, kwargs, options, task=None, **kw):  # type: ignore[no-untyped-def]
    """Each task names its queue as `studio_queue` (Celery 6 drops the `queue` task
    attribute); `default` when it names none. A send that gives a queue keeps it."""
    if task is None:
        return None
    return {"queue": getattr(task, "studio_queue", Queue.DEFAULT.value)}


app = Celery("studio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_default_queue=Queue.DEFAULT.value,
    task_routes=(route,),
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
app.autodiscover_tasks(
    [
        "apps.audit",
        "apps.core",
        "apps.evals",
        "apps.finetune",
        "apps.generation",
        "apps.webhooks",
    ]
)
