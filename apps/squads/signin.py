"""Sign-in lockout: django-axes, counted in the shared cache, audited, unlocked by staff.

After `AXES_FAILURE_LIMIT` failed sign-ins for one username or from one address (within
`AXES_COOLOFF_TIME` of each other), every sign-in for that username or from that
address is refused — the right password included — at /login/ and /admin/login/ alike,
until the lockout expires (each further failure restarts it) or staff unlock it
(`signin_unlock`: the admin's user list action and `manage.py signin_unlock`).

Squad owners cannot unlock: any signed-in user may create a squad and add anyone to it,
so an owner's unlock would let an attacker reset the lockout of any account.
"""

import ipaddress
from datetime import timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from axes.utils import reset as axes_reset
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.audit.services import audit_log
from apps.core.exceptions import PermissionDenied, ValidationFailed
from apps.core.http import client_ip

USERNAME_MAX = 150


class SigninLockoutBackend(AxesStandaloneBackend):
    """Axes' check before the password backends. A call without a request (Django's
    test client `login()`, code with no HTTP caller) has no address to count and is
    not a sign-in from outside: it is not checked."""

    def authenticate(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, *args, **kwargs)


def _clean_username(raw: object) -> str:
    return str(raw or "").replace("\x00", "\ufffd")[:USERNAME_MAX]


def lockout_seconds(request: HttpRequest | None = None) -> int:
    cool_off = get_cool_off(request) or timedelta(0)
    return int(cool_off.total_seconds())


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict | None = None,
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the sign-in page's refusal, 429 with Retry-After."""
    seconds = lockout_seconds(request)
    response = render(
        request,
        "registration/locked_out.html",
        {"minutes": max(1, round(seconds / 60))},
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response


def signin_locked_out_audit(*, request: HttpRequest, username: str | None) -> None:
    """Record the moment a username or address becomes locked out (not every refused
    attempt after it: those only extend the lockout)."""
    failures = getattr(request, "axes_failures_since_start", None)
    if failures != settings.AXES_FAILURE_LIMIT:
        return
    with transaction.atomic():
        audit_log(
            actor=None,
            action="auth.signin_locked",
            target_type="auth.user",
            target_id=_clean_username(username),
            data={
                "username": _clean_username(username),
                "ip_address": client_ip(request),
                "path": request.path[:200],
                "failures": failures,
                "lockout_seconds": lockout_seconds(request),
            },
            request=request,
        )


@transaction.atomic
def signin_unlock(
    *,
    actor: AbstractBaseUser,
    username: str = "",
    ip_address: str = "",
    request: HttpRequest | None = None,
) -> int:
    """Lift the sign-in lockout of a username, an address, or both (staff only).
    Returns how many lockout counters were cleared."""
    if not (actor.is_authenticated and actor.is_active and actor.is_staff):
        raise PermissionDenied("Only staff can unlock sign-ins.")
    username = _clean_username(username).strip()
    ip_address = (ip_address or "").strip()
    if not username and not ip_address:
        raise ValidationFailed("Name a username or an address to unlock.", field="username")
    if ip_address:
        try:
            ip_address = str(ipaddress.ip_address(ip_address))
        except ValueError:
            raise ValidationFailed(
                f"'{ip_address}' is not an IP address.", field="ip_address"
            ) from None
    cleared = axes_reset(ip=ip_address or None, username=username or None)
    audit_log(
        actor=actor,
        action="auth.signin_unlocked",
        target_type="auth.user" if username else "",
        target_id=username,
        data={"username": username, "ip_address": ip_address, "cleared": cleared},
        request=request,
    )
    return cleared
