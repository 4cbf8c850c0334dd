"""gunicorn settings (`gunicorn -c studio/gunicorn.conf.py studio.wsgi:application`).

Bind address and worker count stay on the command line (scripts/run.sh). Here: logs
in Studio's format, no gunicorn access log (the telemetry middleware writes one line
per request with its route, status, duration and request id), and Prometheus
multiprocess bookkeeping when PROMETHEUS_MULTIPROC_DIR is set.
"""

import os

from apps.telemetry.logconfig import gunicorn_logconfig

accesslog = None
# gunicorn 24+ opens a control socket at one path shared by every instance of a user
# (~/.gunicorn/gunicorn.ctl): a second server, a test's, would take it over or remove
# it. Studio does not use it.
control_socket_disable = True
logconfig_dict = gunicorn_logconfig(
    log_format=os.environ.get("STUDIO_LOG_FORMAT", "json"),
    level=os.environ.get("LOG_LEVEL", "INFO"),
)


def child_exit(server: object, worker: object) -> None:
    """A worker process ended: drop its live-gauge files so they stop being summed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
