"""The UI shell in a real browser: sign-in, squads dashboard, members, API tokens.

Data is made through the services, the way the app makes it; everything else
goes through the pages as a person would use them (htmx included).
"""

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from apps.squads import services
from apps.squads.models import ApiToken, Membership, Squad

pytestmark = pytest.mark.browser

OWNER, OWNER_PW = "olivia", "pw-olivia-123"
# Once the server's answer is in, htmx swaps it within milliseconds.
# Long enough for a loaded 2-core CI machine; a swap that never happens still fails.
SWAP_TIMEOUT_MS = 10_000


def make_user(username: str, password: str | None = None):
    return get_user_model().objects.create_user(username, password=password or f"pw-{username}-123")


def test_duplicate_slug_shows_inline_error_without_reload(page, login, live_server):
    make_user(OWNER, OWNER_PW)
    services.squad_create(actor=make_user("oscar"), name="Taken", slug="taken")

    login(page, OWNER, OWNER_PW)
    expect(page.get_by_text("You are not in any squad yet.")).to_be_visible()
    # Survives an htmx swap, not a page load: proves the error came without a reload.
    page.evaluate("window.__sameDocument = true")

    create = page.locator("#create-squad")
    expect(create.get_by_role("heading", name="Create a squad")).to_be_visible()
    create.get_by_label("Name").fill("Demo squad")
    create.get_by_label("Slug").fill("taken")
    create.get_by_label("Description").fill("Where demos live.")
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url == f"{live_server.url}/"
    ) as response:
        create.get_by_role("button", name="Create squad").click()
    assert response.value.status == 409

    expect(page.locator("#create-squad #create-error")).to_have_text(
        "A squad with slug 'taken' already exists.", timeout=SWAP_TIMEOUT_MS
    )
    assert page.url == f"{live_server.url}/"
    assert page.evaluate("window.__sameDocument === true")
    expect(create.get_by_label("Slug")).to_have_attribute("aria-invalid", "true")
    expect(create.get_by_label("Name")).to_have_value("Demo squad")  # input is kept
    expect(create.get_by_label("Description")).to_have_value("Where demos live.")
    assert not Squad.objects.filter(name="Demo squad").exists()


def test_create_squad_lands_on_squad_page_with_owner_badge(page, login, live_server):
    owner = make_user(OWNER, OWNER_PW)
    services.squad_create(actor=make_user("oscar"), name="Taken", slug="taken")

    login(page, OWNER, OWNER_PW)
    create = page.locator("#create-squad")
    create.get_by_label("Name").fill("Demo squad")
    create.get_by_label("Slug").fill("demo")
    create.get_by_role("button", name="Create squad").click()

    expect(page).to_have_url(f"{live_server.url}/squads/demo/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Demo squad demo")
    expect(page.locator("main p").filter(has_text="Your roles").locator(".badge")).to_have_text(
        ["owner"]
    )
    # The navigation lists the new squad, marked current, with the owner badge.
    nav = page.get_by_role("navigation", name="Squads")
    expect(nav.get_by_role("link", name="Demo squad")).to_have_attribute("aria-current", "page")
    item = nav.get_by_role("listitem").filter(has=page.get_by_role("link", name="Demo squad"))
    expect(item.locator(".badge")).to_have_text(["owner"])
    expect(nav.get_by_role("link", name="Taken")).to_have_count(0)
    assert Membership.objects.get(squad__slug="demo").user == owner


def test_owner_adds_changes_and_removes_member(page, login, live_server):
    owner = make_user(OWNER, OWNER_PW)
    make_user("sam")
    squad = services.squad_create(actor=owner, name="Demo", slug="demo")
    page.on("dialog", lambda dialog: dialog.accept())

    login(page, OWNER, OWNER_PW)
    page.goto("/squads/demo/members/")
    expect(page.get_by_role("heading", name="Members", exact=True)).to_be_visible()

    # Add sam as an SME through the htmx form.
    add = page.locator("#member-section section").filter(
        has=page.get_by_role("heading", name="Add a member")
    )
    add.get_by_label("Username").fill("sam")
    add.get_by_label("Subject-matter expert").check()
    add.get_by_role("button", name="Add member").click()
    expect(page.get_by_role("status")).to_have_text("Added sam.")
    sam_row = page.locator("#member-sam")
    expect(sam_row.get_by_role("cell").first).to_have_text("sam")
    expect(sam_row.get_by_label("Subject-matter expert")).to_be_checked()
    expect(sam_row.get_by_label("Owner")).not_to_be_checked()
    assert Membership.objects.get(squad=squad, user__username="sam").roles == ["sme"]

    # Change sam's roles: add compliance lead; the row is swapped in place.
    sam_row.get_by_label("Compliance lead").check()
    with page.expect_response(
        lambda r: r.url.endswith("/squads/demo/members/sam") and r.request.method == "POST"
    ) as response:
        sam_row.get_by_role("button", name="Save roles").click()
    assert response.value.status == 200
    expect(sam_row.get_by_label("Compliance lead")).to_be_checked()
    expect(sam_row.get_by_label("Subject-matter expert")).to_be_checked()
    assert Membership.objects.get(squad=squad, user__username="sam").roles == [
        "sme",
        "compliance",
    ]
    page.screenshot(path="/tmp/members.png", full_page=True)

    # Removing sam (after the confirm dialog) takes the row away.
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    page.locator("#member-sam").get_by_role("button", name="Remove").click()
    expect(page.locator("#member-sam")).to_have_count(0)
    expect(page.locator("#member-olivia")).to_have_count(1)
    assert dialogs == ["Remove sam from Demo?"]
    assert not Membership.objects.filter(squad=squad, user__username="sam").exists()
    assert Membership.objects.filter(squad=squad, user=owner).exists()


def test_last_owner_cannot_remove_themselves(page, login, live_server):
    owner = make_user(OWNER, OWNER_PW)
    squad = services.squad_create(actor=owner, name="Demo", slug="demo")
    services.membership_add(actor=owner, squad=squad, user=make_user("sam"), roles=["sme"])
    page.on("dialog", lambda dialog: dialog.accept())

    login(page, OWNER, OWNER_PW)
    page.goto("/squads/demo/members/")
    olivia_row = page.locator("#member-olivia")
    with page.expect_response(lambda r: r.url.endswith("/members/olivia/remove")) as response:
        olivia_row.get_by_role("button", name="Remove").click()
    assert response.value.status == 409
    expect(olivia_row.get_by_role("alert")).to_have_text(
        "'olivia' is the last owner of squad 'demo'; a squad always keeps at least one owner.",
        timeout=SWAP_TIMEOUT_MS,
    )
    expect(olivia_row.get_by_label("Owner")).to_be_checked()
    assert Membership.objects.filter(squad=squad, user=owner).exists()


def test_api_token_create_use_revoke(page, login, live_server):
    owner = make_user(OWNER, OWNER_PW)
    services.squad_create(actor=owner, name="Demo", slug="demo")
    page.on("dialog", lambda dialog: dialog.accept())

    login(page, OWNER, OWNER_PW)
    page.get_by_role("link", name="API tokens").click()
    page.wait_for_url(f"{live_server.url}/account/tokens/")
    expect(page.get_by_text("No tokens yet.")).to_be_visible()

    page.get_by_label("Name").fill("ci-pipeline")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token-secret").inner_text().strip()
    assert secret.startswith(ApiToken.PREFIX)
    row = page.locator("tbody tr").filter(
        has=page.get_by_role("cell", name="ci-pipeline", exact=True)
    )
    expect(row.get_by_role("cell", name="active", exact=True)).to_be_visible()

    url = f"{live_server.url}/api/v1/squads"
    headers = {"Authorization": f"Bearer {secret}"}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert [(s["slug"], s["my_roles"]) for s in response.json()] == [("demo", ["owner"])]

    row.get_by_role("button", name="Revoke").click()
    expect(row.get_by_role("cell", name="revoked", exact=True)).to_be_visible()
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    expect(page.locator("#new-token-secret")).to_have_count(0)  # shown once only

    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Token revoked."}


def test_viewer_sees_no_member_management_and_no_foreign_squad(page, login, live_server):
    owner = make_user(OWNER, OWNER_PW)
    viewer = make_user("victor", "pw-victor-123")
    squad = services.squad_create(actor=owner, name="Demo", slug="demo")
    services.membership_add(actor=owner, squad=squad, user=viewer, roles=["viewer"])
    services.squad_create(actor=owner, name="Hidden", slug="hidden")

    login(page, "victor", "pw-victor-123")
    nav = page.get_by_role("navigation", name="Squads")
    expect(nav.get_by_role("listitem").filter(has_text="Demo").locator(".badge")).to_have_text(
        ["viewer"]
    )
    expect(nav.get_by_role("link", name="Hidden")).to_have_count(0)

    page.goto("/squads/demo/members/")
    expect(page.get_by_role("heading", name="Members", exact=True)).to_be_visible()
    expect(page.locator("#member-victor .badge")).to_have_text(["viewer"])
    expect(page.locator("#member-olivia .badge")).to_have_text(["owner"])
    expect(page.get_by_role("heading", name="Add a member")).to_have_count(0)
    expect(page.get_by_role("button", name="Save roles")).to_have_count(0)
    expect(page.get_by_role("button", name="Remove")).to_have_count(0)
    expect(page.get_by_role("checkbox")).to_have_count(0)

    # A squad they are not in looks exactly like one that does not exist.
    for slug in ("hidden", "no-such-squad"):
        response = page.goto(f"/squads/{slug}/")
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="404 — not found")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text(f"Squad '{slug}' not found.")
