from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.exceptions import ValidationFailed
from apps.squads import services
from apps.squads.models import ApiToken
from tests.conftest import ApiClient
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_token_lifecycle_create_use_revoke():
    user = UserFactory(username="ci-bot")
    token, secret = services.api_token_create(actor=user, name="pipeline")

    # Stored only as a hash; the secret is not in the row.
    row = ApiToken.objects.get(pk=token.pk)
    assert secret not in (row.key_hash, row.key_prefix, row.name)
    assert row.key_hash == ApiToken.hash_key(secret)
    assert secret.startswith(row.key_prefix)
    assert row.last_used_at is None

    client = ApiClient(secret)
    response = client.call("GET", "/api/v1/me")
    assert response.status_code == 200
    assert response.json() == {"username": "ci-bot", "is_staff": False}
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None

    # Listing never shows the secret again.
    listed = client.call("GET", "/api/v1/tokens").json()
    assert listed[0]["name"] == "pipeline" and "token" not in listed[0]

    assert client.call("DELETE", f"/api/v1/tokens/{token.pk}").json()["status"] == "revoked"
    response = client.call("GET", "/api/v1/me")
    assert response.status_code == 401
    assert response.json() == {"detail": "Token revoked."}
    assert response["WWW-Authenticate"].startswith("Bearer")
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert actions == ["token.created", "token.revoked"]


def test_token_created_through_api_is_shown_once():
    user = UserFactory(username="dev")
    _, secret = services.api_token_create(actor=user, name="bootstrap")
    created = ApiClient(secret).call(
        "POST", "/api/v1/tokens", {"name": "second", "expires_at": "2099-01-01T00:00:00Z"}
    )
    assert created.status_code == 201
    body = created.json()
    assert body["token"].startswith("stu_") and body["expires_at"].startswith("2099-01-01")
    assert ApiClient(body["token"]).call("GET", "/api/v1/me").status_code == 200


def test_expired_token_is_refused_with_reason(monkeypatch):
    user = UserFactory(username="temp")
    services.api_token_create(
        actor=user, name="short", expires_at=timezone.now() + timedelta(minutes=5)
    )
    _, secret = services.api_token_create(
        actor=user, name="short", expires_at=timezone.now() + timedelta(minutes=5)
    )
    client = ApiClient(secret)
    assert client.call("GET", "/api/v1/me").status_code == 200  # now cached as valid
    later = timezone.now() + timedelta(minutes=6)
    monkeypatch.setattr(services.timezone, "now", lambda: later)
    response = client.call("GET", "/api/v1/me")
    assert response.status_code == 401
    assert response.json() == {"detail": "Token expired."}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "Authentication required"),
        ("Bearer stu_not-a-real-token", "Invalid token."),
        ("Bearer something-else", "Invalid token."),
        ("Token abc", "Malformed Authorization header"),
        ("Bearer ", "Malformed Authorization header"),
    ],
)
def test_401_reasons(header, reason):
    headers = {"Authorization": header} if header is not None else {}
    response = Client().get("/api/v1/squads", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"].startswith(reason)


def test_inactive_users_token_is_refused():
    user = UserFactory(username="leaver")
    _, secret = services.api_token_create(actor=user, name="old")
    assert ApiClient(secret).call("GET", "/api/v1/me").status_code == 200  # cached
    user.is_active = False
    user.save()
    response = ApiClient(secret).call("GET", "/api/v1/me")
    assert response.status_code == 401
    assert "inactive" in response.json()["detail"]


def test_expiry_in_the_past_or_without_zone_is_refused():
    user = UserFactory(username="dev")
    with pytest.raises(ValidationFailed, match="future"):
        services.api_token_create(
            actor=user, name="x", expires_at=timezone.now() - timedelta(days=1)
        )
    _, secret = services.api_token_create(actor=user, name="ok")
    response = ApiClient(secret).call(
        "POST", "/api/v1/tokens", {"name": "naive", "expires_at": "2099-01-01T00:00:00"}
    )
    assert response.status_code == 422
    assert response.json()["field"] == "expires_at"
    assert ApiToken.objects.filter(name="naive").count() == 0


def test_session_auth_needs_csrf_for_unsafe_methods():
    UserFactory(username="browser")
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="browser", password=PASSWORD)
    assert client.get("/api/v1/me").status_code == 200
    refused = client.post("/api/v1/tokens", data={"name": "x"}, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    client.get("/account/tokens/")  # sets the CSRF cookie
    csrf = client.cookies["csrftoken"].value
    accepted = client.post(
        "/api/v1/tokens",
        data={"name": "x"},
        content_type="application/json",
        headers={"X-CSRFToken": csrf},
    )
    assert accepted.status_code == 201


def test_last_used_is_written_at_most_once_per_resolution(django_assert_max_num_queries):
    user = UserFactory(username="busy")
    _, secret = services.api_token_create(actor=user, name="hot")
    client = ApiClient(secret)
    client.call("GET", "/api/v1/me")
    first = ApiToken.objects.get(user=user).last_used_at
    with django_assert_max_num_queries(1):
        client.call("GET", "/api/v1/me")
    assert ApiToken.objects.get(user=user).last_used_at == first


def test_warm_token_and_permission_checks_cost_no_query(squad, django_assert_num_queries):
    _, secret = services.api_token_create(actor=UserFactory(username="sme"), name="hot")
    client = ApiClient(secret)
    client.call("GET", "/api/v1/squads/acme/members")
    # Only the member list remains; token, squad and permissions come from the cache.
    with django_assert_num_queries(1):
        client.call("GET", "/api/v1/squads/acme/members")


def test_revocation_and_role_changes_reach_cached_entries_at_once(squad):
    owner = UserFactory(username="owner")
    sme = UserFactory(username="sme")
    token, secret = services.api_token_create(actor=sme, name="hot")
    client = ApiClient(secret)
    assert client.call("PATCH", "/api/v1/squads/acme", {"description": "x"}).status_code == 403
    from apps.squads.models import Membership

    membership = Membership.objects.get(squad=squad, user=sme)
    services.membership_set_roles(actor=owner, membership=membership, roles=["owner", "sme"])
    assert client.call("PATCH", "/api/v1/squads/acme", {"description": "x"}).status_code == 200
    services.membership_remove(actor=owner, membership=membership)
    assert client.call("GET", "/api/v1/squads/acme").status_code == 404
    services.api_token_revoke(actor=sme, token=token)
    assert client.call("GET", "/api/v1/me").json() == {"detail": "Token revoked."}
