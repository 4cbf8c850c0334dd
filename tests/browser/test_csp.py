"""The policy holds in a real browser: pages and htmx work under it, the docs page's
Swagger UI loads from Studio itself, and the fixture's violation check does catch one."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import csp_violations
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser


def test_the_violation_check_catches_an_inline_script_and_a_remote_image(
    page, console, login, squad
) -> None:
    login(page, "owner", PASSWORD)
    page.goto("/squads/acme/")
    page.evaluate(
        """() => {
        const s = document.createElement("script");
        s.textContent = "window.ran = true";
        document.body.append(s);
        const img = document.createElement("img");
        img.src = "https://remote.example/pixel.png";
        document.body.append(img);
    }"""
    )
    page.wait_for_timeout(300)
    assert page.evaluate("window.ran") is None  # the inline script did not run
    found = csp_violations(console)
    assert any("script-src" in v for v in found), console
    assert any("img-src" in v and "remote.example" in v for v in found), console
    console.clear()  # expected here; the fixture fails on any left over


def test_htmx_pages_work_under_the_policy(page, login, squad) -> None:
    login(page, "owner", PASSWORD)
    page.goto("/squads/acme/members/")
    add = page.get_by_role("region", name="Add a member")
    add.get_by_label("Username").fill("outsider")
    add.get_by_label("Viewer").check()
    add.get_by_role("button", name="Add member").click()
    expect(page.get_by_role("status")).to_have_text("Added outsider.")
    expect(page.get_by_role("cell", name="outsider", exact=True)).to_be_visible()


def test_delete_asks_first_without_an_inline_handler(page, login, squad) -> None:
    from apps.squads.models import Squad
    from apps.webhooks import services
    from apps.webhooks.models import Webhook
    from tests.factories import UserFactory

    webhook, _ = services.webhook_create(
        actor=UserFactory(username="owner"),
        squad=Squad.objects.get(slug="acme"),
        url="https://receiver.example/hook",
        events=["label.moved"],
    )
    login(page, "owner", PASSWORD)
    page.goto(f"/squads/acme/webhooks/{webhook.pk}/")
    questions: list[str] = []

    def answer(dialog, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))
    page.get_by_role("button", name="Delete").click()
    page.wait_for_timeout(300)
    assert questions == ["Delete this webhook and its delivery log?"]
    assert Webhook.objects.filter(pk=webhook.pk).exists()
    page.once("dialog", lambda d: answer(d, True))
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**/webhooks/")
    assert not Webhook.objects.filter(pk=webhook.pk).exists()


def test_the_api_docs_page_runs_swagger_ui_from_local_files(page, login, squad) -> None:
    login(page, "owner", PASSWORD)
    page.goto("/api/v1/docs")
    # Swagger UI's bundle loaded from /static/ and drew its frame (no violation: the fixture).
    expect(page.locator("#swagger-ui .swagger-ui").first).to_be_attached()
    assert page.evaluate("typeof window.SwaggerUIBundle") == "function"


def test_admin_console_works_under_the_policy(page, live_server, squad) -> None:
    from tests.factories import UserFactory

    UserFactory(username="root", is_staff=True, is_superuser=True)
    page.goto("/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    for path in ("/admin/squads/squad/", "/admin/auth/user/", "/admin/webhooks/webhook/"):
        page.goto(path)
        expect(page.locator("#changelist")).to_be_visible()
