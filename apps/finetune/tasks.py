"""Fine-tuning's tasks: fine-tune jobs and adapter comparisons on the gpu queue."""

from apps.core.jobs import wake_task
from apps.core.queues import Queue

run_finetune_job = wake_task("finetune.job", Queue.GPU)
run_adapter_comparison = wake_task("finetune.comparison", Queue.GPU)
