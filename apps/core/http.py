from django.http import HttpRequest


def client_ip(request: HttpRequest | None) -> str | None:
    """The caller's address as the web server saw it (REMOTE_ADDR).

    Behind a proxy, the proxy must set REMOTE_ADDR (gunicorn --forwarded-allow-ips);
    X-Forwarded-For is not trusted here because any client can forge it.
    """
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None
