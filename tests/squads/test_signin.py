"""Sign-in lockout (django-axes on the cache): per account and per address, at /login/ and
/admin/login/, the right password refused while locked, audited, unlocked by staff."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from apps.audit.models import AuditEvent
from apps.core.exceptions import PermissionDenied, ValidationFailed
from apps.squads.signin import signin_unlock
from studio.settings import base as real_settings
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

LIMIT = real_settings.AXES_FAILURE_LIMIT  # the shipped default, not a test value


def _sign_in(client: Client, username: str, password: str, *, path: str = "/login/", ip=None):
    extra = {"REMOTE_ADDR": ip} if ip else {}
    return client.post(path, {"username": username, "password": password}, **extra)


def _signed_in(response) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


@pytest.fixture
def user(db):
    return UserFactory(username="olivia")


def test_the_right_password_is_refused_while_the_account_is_locked(user, settings) -> None:
    settings.AXES_FAILURE_LIMIT = LIMIT
    client = Client()
    for _ in range(LIMIT - 1):
        assert _sign_in(client, "olivia", "wrong").status_code == 200  # the form again
    assert _sign_in(client, "olivia", "wrong").status_code == 429  # the one that locks
    locked = _sign_in(client, "olivia", PASSWORD)
    assert locked.status_code == 429 and not _signed_in(locked)
    assert int(locked["Retry-After"]) == int(real_settings.AXES_COOLOFF_TIME.total_seconds())
    assert b"Sign-in locked" in locked.content
    # From another address too: the account itself is locked.
    elsewhere = _sign_in(Client(), "olivia", PASSWORD, ip="203.0.113.9")
    assert elsewhere.status_code == 429
    (event,) = AuditEvent.objects.filter(action="auth.signin_locked")  # once, not per try
    assert event.data["username"] == "olivia" and event.data["failures"] == LIMIT
    assert event.actor_label == "system" and event.ip == "127.0.0.1"


def test_one_address_trying_many_accounts_is_locked(user, settings) -> None:
    settings.AXES_FAILURE_LIMIT = LIMIT
    attacker = Client()
    for n in range(LIMIT):
        _sign_in(attacker, f"guess{n}", "wrong", ip="198.51.100.7")
    assert _sign_in(attacker, "olivia", PASSWORD, ip="198.51.100.7").status_code == 429
    # The account is not locked for its owner elsewhere.
    assert _signed_in(_sign_in(Client(), "olivia", PASSWORD, ip="192.0.2.1"))


def test_admin_login_is_locked_the_same_way(settings) -> None:
    settings.AXES_FAILURE_LIMIT = LIMIT
    UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    for _ in range(LIMIT):
        _sign_in(client, "root", "wrong", path="/admin/login/")
    locked = _sign_in(client, "root", PASSWORD, path="/admin/login/")
    assert locked.status_code == 429 and not _signed_in(locked)
    assert _sign_in(Client(), "root", PASSWORD, ip="192.0.2.1").status_code == 429


def test_the_lockout_expires(user, settings) -> None:
    import time

    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    client = Client()
    for _ in range(2):
        _sign_in(client, "olivia", "wrong")
    assert _sign_in(client, "olivia", PASSWORD).status_code == 429
    time.sleep(2.1)
    assert _signed_in(_sign_in(client, "olivia", PASSWORD))


def test_staff_unlock_through_the_service_the_command_and_the_admin(user, settings) -> None:
    settings.AXES_FAILURE_LIMIT = LIMIT
    staff = UserFactory(username="admin", is_staff=True, is_superuser=True)
    owner = UserFactory(username="owner")

    def lock() -> None:
        for _ in range(LIMIT):
            _sign_in(Client(), "olivia", "wrong", ip="192.0.2.50")
        assert _sign_in(Client(), "olivia", PASSWORD, ip="192.0.2.99").status_code == 429

    lock()
    with pytest.raises(PermissionDenied):
        signin_unlock(actor=owner, username="olivia")
    with pytest.raises(ValidationFailed):
        signin_unlock(actor=staff)
    with pytest.raises(ValidationFailed) as bad:
        signin_unlock(actor=staff, ip_address="not-an-ip")
    assert bad.value.field == "ip_address"
    assert signin_unlock(actor=staff, username="olivia") >= 1
    assert _signed_in(_sign_in(Client(), "olivia", PASSWORD, ip="192.0.2.99"))
    # The address stayed locked until it is unlocked too.
    assert _sign_in(Client(), "owner", PASSWORD, ip="192.0.2.50").status_code == 429
    call_command("signin_unlock", "--ip", "192.0.2.50", "--as", "admin")
    assert _signed_in(_sign_in(Client(), "owner", PASSWORD, ip="192.0.2.50"))
    with pytest.raises(CommandError, match="Only staff"):
        call_command("signin_unlock", "--username", "olivia", "--as", "owner")

    lock()
    admin_client = Client()
    admin_client.force_login(staff)
    response = admin_client.post(
        "/admin/auth/user/",
        {"action": "unlock_signin", "_selected_action": [str(user.pk)]},
    )
    assert response.status_code == 302
    assert _signed_in(_sign_in(Client(), "olivia", PASSWORD, ip="192.0.2.99"))
    unlocks = AuditEvent.objects.filter(action="auth.signin_unlocked").order_by("sequence")
    assert [(e.actor_label, e.data["username"], e.data["ip_address"]) for e in unlocks] == [
        ("admin", "olivia", ""),
        ("admin", "", "192.0.2.50"),
        ("admin", "olivia", ""),
    ]


def test_a_success_before_the_limit_clears_the_count(user, settings) -> None:
    settings.AXES_FAILURE_LIMIT = LIMIT
    client = Client()
    for _ in range(LIMIT - 1):
        _sign_in(client, "olivia", "wrong")
    assert _signed_in(_sign_in(client, "olivia", PASSWORD))
    for _ in range(LIMIT - 1):
        _sign_in(Client(), "olivia", "wrong")
    assert _signed_in(_sign_in(Client(), "olivia", PASSWORD))
