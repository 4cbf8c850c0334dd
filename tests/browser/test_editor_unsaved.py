"""The prompt editor keeps typed work: leaving with unsaved changes asks first, saving does
not, and the next page says what was saved (issue 16, defect 10)."""

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from apps.squads.management.commands.seed_demo import DEMO_PASSWORD

pytestmark = pytest.mark.browser
EDIT = "/squads/demo/prompts/summarise/edit"


def test_leaving_the_editor_with_unsaved_changes_asks_and_saving_says_saved(
    page, login, live_server
):
    call_command("seed_demo")
    login(page, "priya", DEMO_PASSWORD)
    dialogs: list[str] = []

    def stay(dialog) -> None:
        dialogs.append(dialog.type)
        dialog.dismiss()

    page.on("dialog", stay)

    # Nothing typed: Cancel just leaves.
    page.goto(EDIT, wait_until="load")
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(f"{live_server.url}/squads/demo/prompts/summarise/")
    assert dialogs == []

    # Typed, then Cancel: the browser asks; staying keeps the text.
    page.goto(EDIT, wait_until="load")
    page.get_by_label("Commit message").fill("Shorter summaries")
    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_label("Commit message")).to_have_value("Shorter summaries")
    assert dialogs == ["beforeunload"]
    assert page.url == f"{live_server.url}{EDIT}"

    # Saving does not ask, and the prompt's page says which version was saved.
    message = page.get_by_label("Message 2 Content")
    message.press("Control+End")
    message.press_sequentially(" Be brief.")
    page.get_by_role("button", name="Save new version").click()
    expect(page).to_have_url(f"{live_server.url}/squads/demo/prompts/summarise/")
    expect(page.get_by_role("status").filter(has_text="Saved v2.")).to_be_visible()
    assert dialogs == ["beforeunload"]
