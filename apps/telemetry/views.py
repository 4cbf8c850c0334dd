"""`GET /metrics` for Prometheus.

Allowed with `Authorization: Bearer <STUDIO_METRICS_TOKEN>` (compared in constant
time; a wrong or unexpected token is 401), or without a token from an address in
`STUDIO_METRICS_ALLOW` (REMOTE_ADDR, never X-Forwarded-For); anything else is 403.
"""

import hmac
import ipaddress
import os
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from apps.core.http import client_ip
from apps.telemetry import metrics  # noqa: F401  (defines the metrics in this process)
from apps.telemetry.collectors import QueueDepthCollector, ReviewBacklogCollector


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.STUDIO_METRICS_ALLOW]


def _address_allowed(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _allowed_networks())


def _refuse(status: int, message: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="studio-metrics"'
    return response


class _InProcess:
    """The default registry's metrics, for a scrape registry built per request."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_InProcess())
    registry.register(QueueDepthCollector())
    registry.register(ReviewBacklogCollector())
    return registry


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, raw = header.partition(" ")
        expected = settings.STUDIO_METRICS_TOKEN
        if (
            scheme.lower() != "bearer"
            or not expected
            or not hmac.compare_digest(raw.strip().encode(), expected.encode())
        ):
            return _refuse(401, "Invalid metrics token.")
    elif not _address_allowed(client_ip(request)):
        return _refuse(
            403, "Metrics need a bearer token or a client address in STUDIO_METRICS_ALLOW."
        )
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
