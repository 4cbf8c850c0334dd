from django.apps import AppConfig
from django.core.signals import request_finished


def _forget_request(**kwargs: object) -> None:
    """The response is closed (and Django's own 4xx/5xx line written): what the middleware
    bound must not follow into the process's next, unrelated lines."""
    import structlog

    structlog.contextvars.clear_contextvars()


class TelemetryConfig(AppConfig):
    name = "apps.telemetry"
    label = "telemetry"
    verbose_name = "Telemetry"

    def ready(self) -> None:
        request_finished.connect(_forget_request, dispatch_uid="telemetry.forget_request")
