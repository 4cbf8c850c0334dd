"""structlog for Studio's own code and the standard library's loggers (Django, Celery,
gunicorn): one line per event on stdout, JSON by default.

`STUDIO_LOG_FORMAT`: `json` (default), `console` (coloured, for a developer's
terminal), or `auto` (console when DEBUG is on and stdout is a terminal, else JSON).
Every line carries what the telemetry middleware or the Celery task signals bound for
the current request or task (request_id, user, squad, context, task_id, job_id...).

Imported by the settings, so it must not import Django models.
"""

import sys
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
]


def renderer_name(log_format: str, *, debug: bool) -> str:
    if log_format == "auto":
        return "console" if debug and sys.stdout.isatty() else "json"
    if log_format not in ("json", "console"):
        raise ValueError(f"STUDIO_LOG_FORMAT must be json, console or auto (got {log_format!r})")
    return log_format


def formatter(renderer: str) -> dict[str, Any]:
    """A logging formatter config that renders stdlib records and structlog events alike."""
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if renderer == "console":
        final.append(structlog.dev.ConsoleRenderer())
    else:
        final += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    return {
        "()": structlog.stdlib.ProcessorFormatter,
        "processors": final,
        "foreign_pre_chain": _SHARED,
    }


def configure(*, log_format: str, level: str, debug: bool) -> dict[str, Any]:
    """Configure structlog and return the LOGGING dict for Django's dictConfig."""
    renderer = renderer_name(log_format, debug=debug)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": formatter(renderer)},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "structured",
            }
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "INFO"},
            # The telemetry middleware writes one access line per request.
            "django.server": {"level": "WARNING"},
        },
    }


def gunicorn_logconfig(*, log_format: str, level: str) -> dict[str, Any]:
    """gunicorn's own lines (boot, worker exits) in the same format; its access log stays
    off because the middleware logs each request with the route and request id."""
    renderer = renderer_name(log_format, debug=False)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": formatter(renderer)},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "structured",
            }
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            "gunicorn.error": {"handlers": [], "level": level, "propagate": True},
            "gunicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
        },
    }
