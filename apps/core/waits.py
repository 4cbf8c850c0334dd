"""A bound on requests that hold their web worker while they wait.

`POST …/generate` with `"wait": true` keeps a worker busy for up to its `timeout`
(120 s at most): with two sync gunicorn workers, two such calls stop the server. A
waiting request first takes one of `limit` slots kept in the shared cache (Redis in
production: one bound for every web process; the local-memory cache: per process);
when none is free it is refused with 429 and Retry-After, before anything is queued.
A slot is freed when the request ends, or expires with its deadline if the process
dies.
"""

import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.cache import cache

from apps.core.exceptions import ApplicationError


class WaitRefused(ApplicationError):
    status_code = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@contextmanager
def wait_slot(name: str, *, limit: int, seconds: float) -> Iterator[None]:
    """Hold one of `limit` slots named `name` for at most `seconds`, or WaitRefused."""
    token = uuid.uuid4().hex
    deadline = time.time() + seconds
    keys = [f"wait-slot:{name}:{i}" for i in range(limit)]
    taken = next(
        (k for k in keys if cache.add(k, (token, deadline), timeout=math.ceil(seconds) + 5)),
        None,
    )
    if taken is None:
        holders = [v for v in cache.get_many(keys).values() if isinstance(v, tuple)]
        soonest = min((until for _, until in holders), default=time.time() + 1)
        raise WaitRefused(
            f"{limit} waiting call(s) are already in progress (STUDIO_GENERATE_MAX_WAITING); "
            'retry later, or call without "wait" and poll the result.',
            retry_after=max(1, math.ceil(soonest - time.time())),
        )
    try:
        yield
    finally:
        held = cache.get(taken)
        if isinstance(held, tuple) and held[0] == token:
            cache.delete(taken)
