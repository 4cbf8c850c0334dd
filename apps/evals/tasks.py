"""Evals' tasks: eval runs on the gpu queue (they generate with the model)."""

from apps.core.jobs import wake_task
from apps.core.queues import Queue

run_eval = wake_task("evals.run", Queue.GPU)
