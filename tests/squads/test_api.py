import pytest

from apps.audit.models import AuditEvent
from apps.squads.models import Membership, Squad

pytestmark = pytest.mark.django_db


def test_squad_create_and_detail(api_as):
    client = api_as("founder")
    created = client.call(
        "POST", "/api/v1/squads", {"name": "Contracts", "slug": "contracts", "description": "x"}
    )
    assert created.status_code == 201
    body = created.json()
    assert body["slug"] == "contracts" and body["my_roles"] == ["owner"]
    assert "manage_members" in body["my_permissions"]
    listed = client.call("GET", "/api/v1/squads").json()
    assert [s["slug"] for s in listed] == ["contracts"]
    assert [e.action for e in AuditEvent.objects.all()] == [
        "token.created",
        "squad.created",
        "squad.member_added",
    ]


def test_member_management_through_the_api(squad, api_as):
    owner = api_as("owner")
    from tests.factories import UserFactory

    UserFactory(username="newbie")
    added = owner.call(
        "POST", "/api/v1/squads/acme/members", {"username": "newbie", "roles": ["sme", "viewer"]}
    )
    assert added.status_code == 201 and added.json()["roles"] == ["sme", "viewer"]
    changed = owner.call("PATCH", "/api/v1/squads/acme/members/newbie", {"roles": ["compliance"]})
    assert changed.json()["roles"] == ["compliance"]
    assert owner.call("DELETE", "/api/v1/squads/acme/members/newbie").status_code == 204
    assert not Membership.objects.filter(user__username="newbie").exists()
    members = [m["username"] for m in owner.call("GET", "/api/v1/squads/acme/members").json()]
    assert members == ["compliance", "engineer", "owner", "sme", "viewer"]


@pytest.mark.parametrize(
    ("method", "path", "body", "raw", "status", "says"),
    [
        ("POST", "/api/v1/squads", None, '{"name": "x",', 400, "Malformed JSON body"),
        # Python's parser takes these; PostgreSQL's jsonb would refuse them at save time.
        ("POST", "/api/v1/squads", None, '{"name": NaN, "slug": "x"}', 400, "NaN is not JSON"),
        ("POST", "/api/v1/squads", None, '{"n": -Infinity}', 400, "-Infinity is not JSON"),
        ("POST", "/api/v1/squads", None, "[1, 2]", 422, "Invalid request"),
        ("POST", "/api/v1/squads", {"slug": "no-name"}, None, 422, "name"),
        ("POST", "/api/v1/squads", {"name": "n" * 101, "slug": "ok"}, None, 422, "name"),
        ("POST", "/api/v1/squads", {"name": "Dup", "slug": "acme"}, None, 409, "already exists"),
        ("POST", "/api/v1/squads", {"name": "Bad", "slug": "Bad Slug"}, None, 422, "Slug"),
        ("GET", "/api/v1/squads/no-such-squad", None, None, 404, "not found"),
        ("GET", "/api/v1/squads/no-such-squad/members", None, None, 404, "not found"),
        (
            "POST",
            "/api/v1/squads/acme/members",
            {"username": "ghost", "roles": ["sme"]},
            None,
            404,
            "No active user named 'ghost'",
        ),
        (
            "POST",
            "/api/v1/squads/acme/members",
            {"username": "sme", "roles": ["sme"]},
            None,
            409,
            "already a member",
        ),
        (
            "POST",
            "/api/v1/squads/acme/members",
            {"username": "outsider", "roles": ["wizard"]},
            None,
            422,
            "roles",
        ),
        (
            "POST",
            "/api/v1/squads/acme/members",
            {"username": "outsider", "roles": []},
            None,
            422,
            "roles",
        ),
        ("PATCH", "/api/v1/squads/acme/members/ghost", {"roles": ["sme"]}, None, 404, "ghost"),
        ("DELETE", "/api/v1/squads/acme/members/owner", None, None, 409, "last owner"),
        ("DELETE", "/api/v1/tokens/999999", None, None, 404, "not found"),
        ("GET", "/api/v1/audit/events?since=yesterday", None, None, 422, "since"),
        ("GET", "/api/v1/audit/export?format=xml&squad=acme", None, None, 422, "format"),
    ],
)
def test_bad_input_gets_a_clear_4xx(squad, api_as, method, path, body, raw, status, says):
    squads_before = Squad.objects.count()
    response = api_as("owner").call(method, path, body, raw=raw)
    assert response.status_code == status, response.content
    assert says.lower() in response.json()["detail"].lower()
    assert Squad.objects.count() == squads_before


def test_openapi_schema_renders(api_as):
    response = api_as("anyone").call("GET", "/api/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/squads/{slug}" in paths and "/api/v1/audit/export" in paths


@pytest.mark.parametrize("role", ["engineer", "sme", "compliance", "viewer"])
def test_adding_a_member_does_not_tell_non_owners_which_usernames_exist(squad, api_as, role):
    """A member who may not manage members gets the same 403 for a real and an unknown
    username; only an owner learns that a name does not exist."""
    client = api_as(role)
    real = client.call(
        "POST", "/api/v1/squads/acme/members", {"username": "outsider", "roles": ["sme"]}
    )
    ghost = client.call(
        "POST", "/api/v1/squads/acme/members", {"username": "ghost", "roles": ["sme"]}
    )
    assert real.status_code == ghost.status_code == 403
    assert real.json() == ghost.json()
    owner = api_as("owner").call(
        "POST", "/api/v1/squads/acme/members", {"username": "ghost", "roles": ["sme"]}
    )
    assert owner.status_code == 404 and "ghost" in owner.json()["detail"]


def test_members_page_does_not_tell_non_owners_which_usernames_exist(squad):
    from django.test import Client

    from tests.factories import PASSWORD

    client = Client()
    assert client.login(username="engineer", password=PASSWORD)
    real = client.post("/squads/acme/members/", {"username": "outsider", "roles": ["sme"]})
    ghost = client.post("/squads/acme/members/", {"username": "ghost", "roles": ["sme"]})
    assert real.status_code == ghost.status_code == 403
    assert b"ghost" not in ghost.content
