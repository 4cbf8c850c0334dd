from django.http import HttpRequest


def client_ip(request: HttpRequest | None) -> str | None:
    """The caller's address as the web server saw it (REMOTE_ADDR).

    Behind a reverse proxy this is the proxy's address (gunicorn's --forwarded-allow-ips
    only makes it trust X-Forwarded-Proto); X-Forwarded-For is not trusted here because
    any client can forge it.
    """
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def parse_id(raw: str | None) -> int | None:
    """A row id typed into a form or a query string, or None when it is not one. Decimal
    digits only (isdigit() also accepts "²", which int() refuses) and at most 18 of them,
    so it fits PostgreSQL's bigint and int() never meets its 4,300-digit limit."""
    raw = (raw or "").strip()
    return int(raw) if raw.isdecimal() and len(raw) <= 18 else None
