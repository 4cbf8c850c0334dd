import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest


@lru_cache(maxsize=8)
def _proxies(entries: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())


def _trusted(raw: str, proxies: tuple) -> bool:
    try:
        address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return False
    return any(address in network for network in proxies)


def client_ip(request: HttpRequest | None) -> str | None:
    """The caller's address: REMOTE_ADDR, or — when REMOTE_ADDR is one of
    STUDIO_TRUSTED_PROXIES — the right-most X-Forwarded-For entry that is not a trusted
    proxy (entries left of it are the client's own claims and can be forged).

    Per-address API budgets, sign-in lockouts and the audit log's `ip` use it.
    """
    if request is None:
        return None
    remote = request.META.get("REMOTE_ADDR") or None
    proxies = _proxies(tuple(getattr(settings, "STUDIO_TRUSTED_PROXIES", ())))
    if remote is None or not proxies or not _trusted(remote, proxies):
        return remote
    forwarded = [e.strip() for e in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    for entry in reversed(forwarded):
        if not entry:
            continue
        if not _trusted(entry, proxies):
            try:
                return str(ipaddress.ip_address(entry))
            except ValueError:
                return remote  # garbage in the header: the proxy's address, not the claim
    return remote


def parse_id(raw: str | None) -> int | None:
    """A row id typed into a form or a query string, or None when it is not one. Decimal
    digits only (isdigit() also accepts "²", which int() refuses) and at most 18 of them,
    so it fits PostgreSQL's bigint and int() never meets its 4,300-digit limit."""
    raw = (raw or "").strip()
    return int(raw) if raw.isdecimal() and len(raw) <= 18 else None
