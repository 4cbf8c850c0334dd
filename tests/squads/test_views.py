import pytest
from django.core.management import call_command
from django.test import Client

from apps.audit.models import AuditEvent
from apps.squads.models import ApiToken, Membership, Squad
from tests.factories import PASSWORD, UserFactory, make_squad

pytestmark = pytest.mark.django_db


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_login_page_and_redirect_for_anonymous(db):
    client = Client()
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert b"Sign in" in client.get("/login/").content
    UserFactory(username="alice")
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_layout_vendors_htmx_and_sets_the_csrf_header(squad):
    page = _client("sme").get("/").content.decode()
    assert "/static/vendor/htmx.min.js" in page
    assert "http://" not in page.split("<body")[0] and "https://" not in page.split("<body")[0]
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
    assert '<span class="badge sme">sme</span>' in page


def test_dashboard_query_count_is_fixed(squad, django_assert_max_num_queries):
    client = _client("owner")
    for i in range(5):
        make_squad(owner=UserFactory(username="owner"), slug=f"extra-{i}")
    with django_assert_max_num_queries(8):
        response = client.get("/")
    assert response.content.count(b'class="badge owner"') >= 12  # nav + table, 6 squads


def test_members_page_query_count_is_fixed(squad, django_assert_max_num_queries):
    client = _client("owner")
    with django_assert_max_num_queries(12) as ctx:
        client.get("/squads/acme/members/")
    owner = UserFactory(username="owner")
    from apps.squads import services

    for i in range(10):
        services.membership_add(
            actor=owner, squad=squad, user=UserFactory(username=f"m{i}"), roles=["viewer"]
        )
    with django_assert_max_num_queries(len(ctx.captured_queries)):
        client.get("/squads/acme/members/")


def test_htmx_create_squad_returns_the_form_partial_with_the_error(squad):
    client = _client("owner")
    response = client.post("/", {"name": "Dup", "slug": "acme"}, headers={"HX-Request": "true"})
    assert response.status_code == 409
    body = response.content.decode()
    assert "<html" not in body and 'id="create-squad"' in body
    assert "already exists" in body
    ok = client.post("/", {"name": "Fresh", "slug": "fresh"})
    assert ok.status_code == 302 and ok["Location"] == "/squads/fresh/"


def test_htmx_member_add_change_and_remove(squad):
    UserFactory(username="newbie")
    client = _client("owner")
    added = client.post(
        "/squads/acme/members/",
        {"username": "newbie", "roles": ["sme"]},
        headers={"HX-Request": "true"},
    )
    assert added.status_code == 200 and b"Added newbie" in added.content
    assert b"<html" not in added.content
    row = client.post(
        "/squads/acme/members/newbie",
        {"roles": ["viewer", "sme"]},
        headers={"HX-Request": "true"},
    )
    assert row.content.decode().lstrip().startswith("<tr")
    assert Membership.objects.get(user__username="newbie").roles == ["sme", "viewer"]
    refused = client.post("/squads/acme/members/owner/remove", headers={"HX-Request": "true"})
    assert refused.status_code == 409 and b"last owner" in refused.content
    removed = client.post("/squads/acme/members/newbie/remove", headers={"HX-Request": "true"})
    assert removed.status_code == 200 and removed.content == b""


def test_unknown_member_error_shows_once_under_the_form_and_keeps_the_input(squad):
    client = _client("owner")
    for headers in ({}, {"HX-Request": "true"}):
        response = client.post(
            "/squads/acme/members/", {"username": "nobody", "roles": ["sme"]}, headers=headers
        )
        assert 400 <= response.status_code < 500
        body = response.content.decode()
        # One message, in the add form (not under each member row), and the input is kept.
        assert body.count('role="alert"') == 1
        assert 'id="add-error"' in body
        assert 'value="nobody"' in body and 'aria-invalid="true"' in body
        add_form = body.split('id="add-title"')[1].split("</form>")[0]
        assert add_form.count(" checked") == 1 and 'value="sme" checked' in add_form


def test_token_page_shows_the_secret_once(db):
    UserFactory(username="dev")
    client = _client("dev")
    created = client.post("/account/tokens/", {"name": "laptop"}).content.decode()
    token = ApiToken.objects.get(name="laptop")
    assert 'id="new-token-secret"' in created
    secret = created.split('id="new-token-secret">')[1].split("<")[0]
    assert ApiToken.hash_key(secret) == token.key_hash
    assert secret not in client.get("/account/tokens/").content.decode()
    bad = client.post("/account/tokens/", {"name": "x", "expires_at": "tomorrow"})
    assert bad.status_code == 400 and b"not a date and time" in bad.content
    client.post(f"/account/tokens/{token.pk}/revoke")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_audit_page_for_compliance(squad):
    page = _client("compliance").get("/audit/acme/?action=squad.*")
    assert page.status_code == 200
    assert b"squad.member_added" in page.content
    assert b"format=csv" in page.content
    bad = _client("compliance").get("/audit/acme/?since=nonsense")
    assert bad.status_code == 422 and b"not a date and time" in bad.content


def test_admin_membership_changes_go_through_the_services(squad):
    UserFactory(username="root", is_staff=True, is_superuser=True)
    client = _client("root")
    newbie = UserFactory(username="newbie")
    response = client.post(
        "/admin/squads/membership/add/",
        {"squad": squad.pk, "user": newbie.pk, "roles": ["sme"]},
    )
    assert response.status_code == 302, response.content[:2000]
    event = AuditEvent.objects.order_by("-sequence").first()
    assert (event.action, event.actor_label) == ("squad.member_added", "root")
    assert newbie.has_perm("squads.view_squad", squad)
    owner_membership = Membership.objects.get(squad=squad, user__username="owner")
    response = client.post(
        f"/admin/squads/membership/{owner_membership.pk}/delete/", {"post": "yes"}, follow=True
    )
    assert b"last owner" in response.content
    assert Membership.objects.filter(pk=owner_membership.pk).exists()


def test_admin_squad_create_makes_the_admin_owner(db):
    UserFactory(username="root", is_staff=True, is_superuser=True)
    client = _client("root")
    response = client.post("/admin/squads/squad/add/", {"name": "Admin made", "slug": "admin-made"})
    assert response.status_code == 302
    squad = Squad.objects.get(slug="admin-made")
    assert Membership.objects.get(squad=squad).roles == ["owner"]
    assert client.get(f"/admin/squads/squad/{squad.pk}/permissions/").status_code == 200


def test_admin_token_revoke_action(db):
    UserFactory(username="root", is_staff=True, is_superuser=True)
    from apps.squads.services import api_token_create

    token, _ = api_token_create(actor=UserFactory(username="leaker"), name="leaked")
    client = _client("root")
    client.post(
        "/admin/squads/apitoken/", {"action": "revoke", "_selected_action": [str(token.pk)]}
    )
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEvent.objects.filter(action="token.revoked", actor_label="root").exists()


def test_seed_demo_is_idempotent(db, capsys):
    call_command("seed_demo")
    events = AuditEvent.objects.count()
    call_command("seed_demo")
    assert AuditEvent.objects.count() == events
    out = capsys.readouterr().out
    assert "olivia" in out and "carmen" in out and "studio-demo" in out
    squad = Squad.objects.get(slug="demo")
    roles = {m.user.username: m.roles for m in squad.memberships.select_related("user")}
    assert roles == {
        "olivia": ["owner"],
        "priya": ["prompt_engineer"],
        "sam": ["sme"],
        "carmen": ["compliance"],
        "victor": ["viewer"],
    }
    assert Client().login(username="carmen", password="studio-demo")
    from apps.prompts.models import Label

    label = Label.objects.get(template__squad=squad, template__slug="summarise", name="production")
    assert label.version.number == 1
    from apps.reviews.models import ReviewQueue

    queue = ReviewQueue.objects.get(squad=squad, slug="summary-quality")
    assert queue.overlap == 2 and queue.items.count() == 3
    assert {i.prompt_version_id for i in queue.items.all()} == {label.version_id}
