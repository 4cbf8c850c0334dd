"""The squad detail's plain view (apps/squads/fast.py): the ninja operation's body and
errors, no query when warm, and no access kept from a warm cache once a token is
revoked, a member removed or their roles changed."""

import json

import pytest
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

from apps.core.plainapi import delegate_to_ninja
from apps.reviews.services.approvals import approval_policy_update
from apps.squads import services
from apps.squads.models import Membership
from tests.conftest import ApiClient
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _client(username: str) -> tuple[object, ApiClient]:
    user = UserFactory(username=username)
    token, secret = services.api_token_create(actor=user, name="fast")
    return token, ApiClient(secret)


def test_body_and_headers_are_the_ninja_operations(squad):
    _, client = _client("sme")
    plain = client.call("GET", "/api/v1/squads/acme")
    request = RequestFactory().get("/api/v1/squads/acme", headers=client.headers)
    ninja = delegate_to_ninja(request)
    assert plain.status_code == ninja.status_code == 200
    assert plain.content == ninja.content
    assert plain["Content-Type"] == ninja["Content-Type"]
    body = json.loads(plain.content)
    assert body["my_roles"] == ["sme"]
    assert "view_squad" in body["my_permissions"]
    assert "change_squad" not in body["my_permissions"]


def test_warm_squad_detail_runs_no_query(squad):
    _, client = _client("engineer")
    assert client.call("GET", "/api/v1/squads/acme").status_code == 200  # warms the caches
    with CaptureQueriesContext(connection) as queries:
        response = client.call("GET", "/api/v1/squads/acme")
    assert response.status_code == 200
    assert len(queries) == 0, [q["sql"] for q in queries]
    with CaptureQueriesContext(connection) as queries:  # HEAD too
        assert client.call("HEAD", "/api/v1/squads/acme").status_code == 200
    assert len(queries) == 0


def test_warm_cache_keeps_no_access_after_revocation_removal_or_role_change(squad):
    owner = UserFactory(username="owner")
    token, client = _client("sme")
    _, other = _client("viewer")
    for c in (client, other):
        assert c.call("GET", "/api/v1/squads/acme").status_code == 200

    membership = Membership.objects.get(squad=squad, user__username="sme")
    services.membership_set_roles(actor=owner, membership=membership, roles=["compliance"])
    body = client.call("GET", "/api/v1/squads/acme").json()
    assert body["my_roles"] == ["compliance"]
    assert "view_audit" in body["my_permissions"]

    services.membership_remove(actor=owner, membership=membership)
    assert client.call("GET", "/api/v1/squads/acme").status_code == 404

    services.api_token_revoke(actor=token.user, token=token)
    response = client.call("GET", "/api/v1/squads/acme")
    assert response.status_code == 401
    assert response.json() == {"detail": "Token revoked."}
    assert response["WWW-Authenticate"] == 'Bearer realm="studio"'

    viewer = UserFactory(username="viewer")
    viewer.is_active = False
    viewer.save()
    services.user_changed(user=viewer)
    assert other.call("GET", "/api/v1/squads/acme").status_code == 401


def test_squad_and_policy_changes_reach_a_warm_detail(squad):
    owner = UserFactory(username="owner")
    _, client = _client("owner")
    assert client.call("GET", "/api/v1/squads/acme").json()["name"] == squad.name
    services.squad_update(actor=owner, squad=squad, name="Acme Renamed")
    assert client.call("GET", "/api/v1/squads/acme").json()["name"] == "Acme Renamed"
    approval_policy_update(actor=owner, squad=squad, protected_labels=["production", "beta"])
    labels = client.call("GET", "/api/v1/squads/acme").json()["protected_labels"]
    assert sorted(labels) == ["beta", "production"]


def test_errors_and_other_methods(squad):
    _, outsider = _client("outsider")
    missing = outsider.call("GET", "/api/v1/squads/acme")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Squad 'acme' not found."}
    anonymous = ApiClient(None).call("GET", "/api/v1/squads/acme")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == 'Bearer realm="studio"'
    _, owner = _client("owner")
    patched = owner.call("PATCH", "/api/v1/squads/acme", {"description": "via ninja"})
    assert patched.status_code == 200 and patched.json()["description"] == "via ninja"
    assert owner.call("GET", "/api/v1/squads/acme").json()["description"] == "via ninja"
    refused = owner.call("PATCH", "/api/v1/squads/acme", {"protected_labels": []})
    assert refused.status_code == 422
