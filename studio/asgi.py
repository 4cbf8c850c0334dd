"""The server entry point: what `make run` and production serve (gunicorn with uvicorn
workers, `-k uvicorn_worker.UvicornWorker`).

`StreamsApart` (apps/core/asgi.py) reads each request's body without a thread, then:
- gateway streams (`POST /v1/chat/completions` with `"stream": true`) run in Django's
  ASGI handler: the stream's body is an async generator over an async upstream
  connection, so a stream waiting for its model holds no thread and one worker keeps
  hundreds open. At most STUDIO_ASGI_SYNC_CONCURRENCY of them per worker are in their
  synchronous part at once (key, scope, input policy, quota, the record), in order;
- other gateway calls run in Django's WSGI handler on a pool of
  STUDIO_ASGI_SYNC_CONCURRENCY threads of their own, so a slow upstream cannot take the
  pages' threads;
- pages and the API run in Django's WSGI handler on the pages' pool of as many threads.
Why WSGI for those: Django's ASGI handler starts a thread per request for synchronous
views, which measured at a third of the throughput on this machine (docs/benchmarks.md).

STUDIO_ASGI tells the settings that threads come and go: on PostgreSQL, connections come
from a pool instead of being kept per thread (studio/settings/base.py).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings.base")
os.environ.setdefault("STUDIO_ASGI", "1")

from a2wsgi import WSGIMiddleware
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

from apps.core.asgi import StreamsApart, SyncPhaseLimit

_pages = get_wsgi_application()  # sets Django up
_streams = get_asgi_application()
_threads = settings.STUDIO_ASGI_SYNC_CONCURRENCY

from apps.gateway.v1 import MAX_BODY  # noqa: E402  (models: after setup)

application = StreamsApart(
    pages=WSGIMiddleware(_pages, workers=_threads or 16),
    gateway=WSGIMiddleware(_pages, workers=_threads or 16),
    streams=SyncPhaseLimit(_streams, _threads),
    peek_limit=MAX_BODY,
    max_body=settings.STUDIO_MAX_REQUEST_BODY,
)
