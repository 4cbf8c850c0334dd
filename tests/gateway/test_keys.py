"""Service keys: create, scope, expiry, rotation with overlap, revocation, audit; the
runtime prompt fetch with a key."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.exceptions import AuthenticationFailed, PermissionDenied, ValidationFailed
from apps.gateway import services
from apps.gateway.models import ServiceKey
from apps.prompts import services as prompts
from apps.squads.models import Squad
from tests.factories import UserFactory, make_squad
from tests.gateway.conftest import make_key

pytestmark = pytest.mark.django_db


def _prompt(squad: Squad, slug: str = "greet") -> None:
    prompts.prompt_template_create(
        actor=UserFactory(username="owner"),
        squad=squad,
        slug=slug,
        first_version={
            "messages": [{"role": "user", "content": "Hello {{ name }}"}],
            "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
            "commit_message": "v1",
            "model": {"target": "local", "max_new_tokens": 8, "temperature": 0.0},
        },
    )


def _fetch(secret: str, squad: str = "acme", slug: str = "greet", version: int = 1):
    return Client().get(
        f"/api/v1/squads/{squad}/prompts/{slug}?version={version}",
        headers={"Authorization": f"Bearer {secret}"},
    )


def test_secret_is_shown_once_and_stored_hashed(squad):
    key, secret = services.service_key_create(
        actor=UserFactory(username="owner"), squad=squad, name="billing", targets=["local"]
    )
    assert secret.startswith("sk-studio-")
    stored = ServiceKey.objects.get(pk=key.pk)
    assert stored.key_hash == ServiceKey.hash_key(secret)
    assert secret not in str(ServiceKey.objects.filter(pk=key.pk).values().first())
    event = AuditEvent.objects.get(action="gateway.key_created")
    assert secret not in str(event.data)
    assert event.data["targets"] == ["local"]


def test_only_owners_create_and_refusals_store_nothing(squad):
    with pytest.raises(PermissionDenied):
        services.service_key_create(actor=UserFactory(username="engineer"), squad=squad, name="x")
    with pytest.raises(ValidationFailed) as exc:
        services.service_key_create(
            actor=UserFactory(username="owner"), squad=squad, name="x", targets=["a b"]
        )
    assert exc.value.field == "targets[0]"
    with pytest.raises(ValidationFailed):
        services.service_key_create(
            actor=UserFactory(username="owner"),
            squad=squad,
            name="x",
            allow_gateway=False,
            allow_prompt_fetch=False,
        )
    assert not ServiceKey.objects.exists()


def test_expired_and_revoked_keys_are_refused(squad):
    owner = UserFactory(username="owner")
    key, secret = services.service_key_create(
        actor=owner, squad=squad, name="x", expires_at=timezone.now() + timedelta(hours=1)
    )
    assert services.service_key_authenticate(raw=secret).key_id == key.pk
    ServiceKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.service_key_forget(key.key_hash)
    with pytest.raises(AuthenticationFailed, match="expired"):
        services.service_key_authenticate(raw=secret)
    key2, secret2 = services.service_key_create(actor=owner, squad=squad, name="y")
    services.service_key_authenticate(raw=secret2)  # cached now
    services.service_key_revoke(actor=owner, key=key2)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        services.service_key_authenticate(raw=secret2)
    assert AuditEvent.objects.filter(action="gateway.key_revoked").count() == 1


def test_rotation_keeps_the_old_key_for_the_overlap_only(squad):
    owner = UserFactory(username="owner")
    old, old_secret = services.service_key_create(
        actor=owner, squad=squad, name="x", prompts=["greet"]
    )
    services.quota_set(actor=owner, squad=squad, key=old, requests_per_minute=5)
    new, new_secret = services.service_key_rotate(actor=owner, key=old, overlap_seconds=600)
    assert new.rotated_from_id == old.pk and new.prompts == ["greet"]
    assert new.quota.requests_per_minute == 5
    assert services.service_key_authenticate(raw=old_secret).key_id == old.pk
    assert services.service_key_authenticate(raw=new_secret).key_id == new.pk
    old.refresh_from_db()
    assert timezone.now() + timedelta(seconds=590) < old.expires_at
    assert old.expires_at <= timezone.now() + timedelta(seconds=600)
    ServiceKey.objects.filter(pk=old.pk).update(expires_at=timezone.now())
    services.service_key_forget(old.key_hash)
    with pytest.raises(AuthenticationFailed):
        services.service_key_authenticate(raw=old_secret)
    event = AuditEvent.objects.get(action="gateway.key_rotated")
    assert event.data["old_key_prefix"] == old.key_prefix
    with pytest.raises(ValidationFailed):
        services.service_key_rotate(actor=owner, key=new, overlap_seconds=-1)


def test_rotation_with_no_overlap_stops_the_old_key_now(squad):
    owner = UserFactory(username="owner")
    old, old_secret = services.service_key_create(actor=owner, squad=squad, name="x")
    services.service_key_rotate(actor=owner, key=old, overlap_seconds=0)
    with pytest.raises(AuthenticationFailed):
        services.service_key_authenticate(raw=old_secret)


def test_prompt_fetch_with_a_key_honours_scope_and_squad(squad):
    _prompt(squad, "greet")
    _prompt(squad, "other")
    fetcher = make_key(squad, allow_gateway=False, allow_prompt_fetch=True, prompts=["greet"])
    response = _fetch(fetcher)
    assert response.status_code == 200, response.content
    assert response.json()["prompt"] == "greet"
    assert _fetch(fetcher).status_code == 200  # warm path
    assert _fetch(fetcher, slug="other").status_code == 404
    gateway_only = make_key(squad, allow_gateway=True, allow_prompt_fetch=False)
    assert _fetch(gateway_only).status_code == 403
    # Squad B's key never reaches squad A's prompt (404, warm or cold).
    other = make_squad(owner=UserFactory(username="b-owner"), slug="beta")
    _, foreign = services.service_key_create(
        actor=UserFactory(username="b-owner"),
        squad=other,
        name="b",
        allow_prompt_fetch=True,
        prompts=["*"],
    )
    assert _fetch(foreign).status_code == 404
    assert _fetch("sk-studio-wrong").status_code == 401


def test_key_api_round_trip(squad, api_as):
    owner = api_as("owner")
    created = owner.call(
        "POST",
        "/api/v1/squads/acme/service-keys",
        {"name": "app", "targets": ["local"], "allow_prompt_fetch": True},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("sk-studio-") and body["status"] == "active"
    listed = api_as("compliance").call("GET", "/api/v1/squads/acme/service-keys").json()
    assert [k["id"] for k in listed] == [body["id"]] and "secret" not in listed[0]
    rotated = owner.call(
        "POST", f"/api/v1/squads/acme/service-keys/{body['id']}/rotate", {"overlap_seconds": 60}
    )
    assert rotated.status_code == 201 and rotated.json()["rotated_from"] == body["id"]
    revoked = owner.call("DELETE", f"/api/v1/squads/acme/service-keys/{body['id']}")
    assert revoked.json()["status"] == "revoked"
    bad = owner.call("POST", "/api/v1/squads/acme/service-keys", {"name": "x", "targets": "all"})
    assert bad.status_code == 422
    quota = owner.call(
        "PUT",
        "/api/v1/squads/acme/gateway/quotas",
        {"requests_per_minute": 10, "budget_cost": "2.5", "budget_period": "month"},
    )
    assert quota.status_code == 200, quota.content
    assert quota.json()["budget_period"] == "month"
    wrong = owner.call("PUT", "/api/v1/squads/acme/gateway/quotas", {"budget_period": "week"})
    assert wrong.status_code == 422
    usage = api_as("engineer").call("GET", "/api/v1/squads/acme/gateway/usage")
    assert usage.status_code == 200, usage.content
