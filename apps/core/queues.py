"""The Celery queues, and sending a task by name (services never import a tasks module)."""

from enum import StrEnum
from typing import Any


class Queue(StrEnum):
    DEFAULT = "default"
    GPU = "gpu"


def send(name: str, *args: Any, queue: Queue) -> None:
    """Send task `name`; call from transaction.on_commit so a rollback sends nothing."""
    from celery import current_app

    current_app.send_task(name, args=list(args), queue=queue.value)
