"""{% queue_position job as waiting %}: where a queued long job stands and why it waits
(apps.core.fairshare); None unless the job is queued."""

from django import template

from apps.core.fairshare import Position, queue_position
from apps.core.models import Job

register = template.Library()


@register.simple_tag
def job_queue_position(job: Job) -> Position | None:
    return queue_position(job)
