"""The prompt editor in a real browser: create a template, type in the editor, see the
preview update and a schema error appear, save version 2, open the diff."""

import json

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from apps.prompts.models import PromptTemplate
from apps.squads import services

pytestmark = pytest.mark.browser

OWNER, OWNER_PW = "olivia", "pw-olivia-123"
# The preview waits 500 ms after the last keystroke, then the server answers.
PREVIEW_TIMEOUT_MS = 5_000
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.fixture
def squad_owner(db):
    owner = get_user_model().objects.create_user(OWNER, password=OWNER_PW)
    return services.squad_create(actor=owner, name="Demo", slug="demo")


def test_create_edit_preview_save_and_diff(page, login, live_server, squad_owner):
    login(page, OWNER, OWNER_PW)
    page.goto("/squads/demo/")
    page.get_by_role("link", name="Prompts").click()
    page.get_by_role("link", name="New prompt").click()
    expect(page.get_by_role("heading", name="New prompt")).to_be_visible()
    preview = page.locator("#preview")
    expect(preview).to_have_attribute("aria-live", "polite")

    page.get_by_label("Slug").fill("greeter")
    page.get_by_label("Tags").fill("support, email")
    page.get_by_label("Message 1 Content").fill("You are a polite assistant.")
    page.get_by_label("Input JSON Schema").fill(json.dumps(SCHEMA, indent=2))
    page.get_by_label("Example variables").fill('{"name": "Ada"}')
    page.get_by_label("Message 2 Content").press_sequentially("Say hello to {{ name }}.")
    expect(preview).to_contain_text("Say hello to Ada.", timeout=PREVIEW_TIMEOUT_MS)
    expect(preview).to_contain_text("Valid — rendered with the example variables.")

    # A schema that is not a JSON Schema: the error appears in place, naming where.
    broken = json.dumps({**SCHEMA, "properties": {"name": {"type": "strnig"}}}, indent=2)
    page.get_by_label("Input JSON Schema").fill(broken)
    expect(preview.get_by_role("list", name="Problems")).to_contain_text(
        "input_schema.properties.name.type", timeout=PREVIEW_TIMEOUT_MS
    )
    expect(preview).to_contain_text("invalid JSON Schema")
    expect(preview).not_to_contain_text("Say hello to Ada.")
    page.get_by_label("Input JSON Schema").fill(json.dumps(SCHEMA, indent=2))
    expect(preview).to_contain_text("Say hello to Ada.", timeout=PREVIEW_TIMEOUT_MS)

    # A third message row comes and goes; the preview follows.
    page.get_by_role("button", name="Add message").click()
    page.get_by_label("Message 3 Content").fill("Hello! How can I help?")
    page.get_by_label("Message 3 Role").select_option("assistant")
    expect(preview).to_contain_text("Hello! How can I help?", timeout=PREVIEW_TIMEOUT_MS)
    page.get_by_role("button", name="Remove message 3").click()
    expect(page.get_by_label("Message 3 Content")).to_have_count(0)
    expect(preview).not_to_contain_text("How can I help?", timeout=PREVIEW_TIMEOUT_MS)

    page.get_by_label("Commit message").fill("First draft")
    page.get_by_role("button", name="Create prompt").click()
    expect(page).to_have_url(f"{live_server.url}/squads/demo/prompts/greeter/")
    expect(page.get_by_role("heading", name="Current version: v1")).to_be_visible()

    # Version 2 adds a required variable: the example variables must follow.
    page.get_by_role("link", name="Edit", exact=True).click()
    expect(page.get_by_label("Message 2 Content")).to_have_value("Say hello to {{ name }}.")
    expect(preview).to_contain_text("Say hello to example.")
    with_tone = {**SCHEMA, "properties": {**SCHEMA["properties"], "tone": {"type": "string"}}}
    page.get_by_label("Input JSON Schema").fill(
        json.dumps({**with_tone, "required": ["name", "tone"]}, indent=2)
    )
    message = page.get_by_label("Message 2 Content")
    message.press("Control+End")
    message.press_sequentially(" Be {{ tone }}.")
    expect(preview.get_by_role("list", name="Variable errors")).to_contain_text(
        "'tone' is a required property", timeout=PREVIEW_TIMEOUT_MS
    )
    page.get_by_label("Example variables").fill('{"name": "Ada", "tone": "cheerful"}')
    expect(preview).to_contain_text("Say hello to Ada. Be cheerful.", timeout=PREVIEW_TIMEOUT_MS)
    page.screenshot(path="/tmp/prompt-editor.png", full_page=True)
    page.get_by_label("Commit message").fill("Ask for a tone")
    page.get_by_role("button", name="Save new version").click()
    expect(page.get_by_role("heading", name="Current version: v2")).to_be_visible()
    assert PromptTemplate.objects.get(slug="greeter").latest_version.parent.number == 1

    page.get_by_role("link", name="Diff with previous (v2)").click()
    expect(page).to_have_url(
        f"{live_server.url}/squads/demo/prompts/greeter/diff?from_version=1&to_version=2"
    )
    expect(page.locator(".verdict")).to_contain_text("BREAKING")
    changes = page.get_by_role("table").filter(has_text="required variable added")
    expect(changes.get_by_role("row").filter(has_text="$.tone")).to_contain_text("BREAKING")
    expect(page.locator("tr.diff-changed td.right")).to_have_text(
        "changed: Say hello to {{ name }}. Be {{ tone }}."
    )
    page.screenshot(path="/tmp/prompt-diff.png", full_page=True)
