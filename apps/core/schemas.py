"""Response schemas shared by several apps' APIs."""

from ninja import Schema


class QueuePositionOut(Schema):
    """Where a queued long job stands in its queue (1 is next) and why it waits; null
    once the job is no longer queued."""

    position: int
    queued: int
    reason: str
