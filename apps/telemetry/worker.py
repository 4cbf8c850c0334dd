"""Celery workers log like the web: through settings.LOGGING (structlog), with the task
id, the task name and the ids the task was given (job_id, generation_id, ...) bound to
every line the task writes. Connected by studio/celery.py when the app is created."""

import inspect
import logging.config
from typing import Any

import structlog
from celery.signals import setup_logging, task_prerun


@setup_logging.connect
def use_django_logging(**kwargs: Any) -> None:
    """With a receiver here Celery leaves logging alone; the settings' LOGGING applies."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


def task_ids(task: Any, args: tuple | list | None, kwargs: dict | None) -> dict[str, Any]:
    """The task's arguments named *_id, by name (tasks take ids: STYLE.md)."""
    try:
        names = list(inspect.signature(task.run).parameters)
    except (TypeError, ValueError):
        names = []
    given = dict(zip(names, args or (), strict=False)) | dict(kwargs or {})
    return {
        name: value
        for name, value in given.items()
        if name.endswith("_id") and isinstance(value, int | str)
    }


@task_prerun.connect
def bind_task(
    task_id: str | None = None,
    task: Any = None,
    args: tuple | None = None,
    kwargs: dict | None = None,
    **_: Any,
) -> None:
    # Cleared at the start of each task, not at its end, so Celery's own "succeeded in"
    # line after the task still carries them. An eager task (tests, CELERY_TASK_ALWAYS_EAGER)
    # runs inside the request that queued it and keeps the request's bindings.
    if not getattr(getattr(task, "request", None), "is_eager", False):
        structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        task_id=task_id,
        task=getattr(task, "name", None),
        **task_ids(task, args, kwargs),
    )
