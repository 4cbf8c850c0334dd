"""Where webhooks may send: the secret parts of a URL, and which addresses are reachable.

A webhook URL often carries its receiver's credential (Slack and Discord put a token in
the path, others a `?token=` or `user:password@`). It is stored and shown to the squad's
owners, who manage the webhook, but the audit log — read by compliance leads and
exported — records it with those parts masked (`mask_url`).

In production (`STUDIO_WEBHOOK_BLOCK_PRIVATE`), a webhook may not reach loopback,
private, link-local (cloud metadata at 169.254.169.254), multicast or reserved
addresses unless `STUDIO_WEBHOOK_ALLOWED_HOSTS` names the host or its network. The check
runs when a URL is saved (`check_url`) and again at every delivery, on the very addresses
the connection then uses (`connect`): a host whose DNS answer changes after it was
saved (DNS rebinding) is refused at delivery.
"""

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from django.conf import settings

from apps.core.exceptions import ValidationFailed

MASK = "***"
# A path segment that looks like a credential: long, and letters mixed with digits
# (Slack's .../T0000/B0000/<24-character secret>, Discord's .../<id>/<token>), or
# just very long.
_TOKENISH = re.compile(r"^[A-Za-z0-9_\-.~+=%]{16,}$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedDestination(OSError):
    """The receiver resolves to an address webhooks may not reach."""


def _secret_segment(segment: str) -> bool:
    if len(segment) >= 32:
        return True
    return bool(
        _TOKENISH.match(segment)
        and any(c.isdigit() for c in segment)
        and any(c.isalpha() for c in segment)
    )


def mask_url(url: str) -> str:
    """The URL with its credentials replaced by ***: the userinfo, every query value,
    the fragment, and path segments that look like tokens."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    path = "/".join(MASK if _secret_segment(s) else s for s in parts.path.split("/"))
    query = urlencode(
        [(k, MASK) for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*"
    )
    if parts.query and not query:  # a bare ?token
        query = MASK
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, quote(path, safe="/*%"), query, fragment))


# --- reachable addresses ----------------------------------------------------------------


def blocking() -> bool:
    return bool(getattr(settings, "STUDIO_WEBHOOK_BLOCK_PRIVATE", False))


def _allowed() -> tuple[set[str], list[IPNetwork]]:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in getattr(settings, "STUDIO_WEBHOOK_ALLOWED_HOSTS", []):
        entry = entry.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return names, networks


# IPv6 prefixes that carry an IPv4 address in their last 32 bits: NAT64 (well-known and
# local-use) and the deprecated IPv4-compatible form (::a.b.c.d). A gateway on the path
# turns them into the IPv4 address, so that address is the one to judge.
_IPV4_IN_LOW_BITS = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96")
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _IPV4_IN_LOW_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _public(embedded)
    return address.is_global and not address.is_multicast


def refused_addresses(host: str, addresses: Iterable[str]) -> list[str]:
    """Those of `addresses` (what `host` resolved to) that a webhook may not reach."""
    if not blocking():
        return []
    names, networks = _allowed()
    if host.lower().rstrip(".") in names:
        return []
    refused = []
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
        if _public(address) or any(address in n for n in networks):
            continue
        refused.append(str(address))
    return refused


def resolve(host: str, port: int) -> list[tuple]:
    """getaddrinfo for a TCP connection (a module-level seam the tests replace)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def check_url(url: str, *, field: str = "url") -> None:
    """Refuse a URL whose host resolves to an address webhooks may not reach (only when
    blocking is on). Call after the URL's syntax was checked."""
    if not blocking():
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = resolve(host, port)
    except OSError as exc:
        raise ValidationFailed(
            f"The host '{host}' does not resolve ({exc.strerror or exc}); webhooks must "
            "name a reachable host.",
            field=field,
        ) from None
    refused = refused_addresses(host, [info[4][0] for info in infos])
    if refused:
        raise ValidationFailed(
            f"The host '{host}' resolves to {', '.join(refused)}, a private, loopback or "
            "link-local address; webhooks may reach it only when STUDIO_WEBHOOK_ALLOWED_HOSTS "
            "names it.",
            field=field,
        )


def connect(
    address: tuple[str, int],
    timeout: float | None = None,
    source_address: tuple[str, int] | None = None,
) -> socket.socket:
    """socket.create_connection that resolves the host once, refuses the whole host if
    any of its addresses may not be reached, and connects to the addresses it checked
    (so a second DNS answer cannot swap in another)."""
    if not blocking():
        return socket.create_connection(address, timeout, source_address)
    host, port = address
    infos = resolve(host, port)
    refused = refused_addresses(host, [info[4][0] for info in infos])
    if refused:
        raise BlockedDestination(
            f"{host} resolves to {', '.join(refused)}, which webhooks may not reach "
            "(STUDIO_WEBHOOK_BLOCK_PRIVATE; allow it in STUDIO_WEBHOOK_ALLOWED_HOSTS)"
        )
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"{host} has no address")
