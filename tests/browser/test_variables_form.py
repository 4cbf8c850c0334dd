"""The variables form built from the input schema, in a real browser: on the editor,
picking an enum option and typing a number rewrite the JSON and the preview renders them;
editing the JSON refills the fields; the playground's prefilled example runs cleanly
through the schema check (no 422)."""

import json

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from apps.prompts import services as prompts
from apps.squads import services

pytestmark = pytest.mark.browser
SCHEMA = {
    "type": "object",
    "properties": {
        "audience": {"type": "string", "enum": ["executives", "engineers"]},
        "words": {"type": "integer", "minimum": 5, "maximum": 200},
        "text": {"type": "string", "minLength": 1},
    },
    "required": ["audience", "words", "text"],
}


@pytest.fixture
def prompt(db):
    priya = get_user_model().objects.create_user("priya", password="pw-priya-123")
    squad = services.squad_create(actor=priya, name="Demo", slug="demo")
    return prompts.prompt_template_create(
        actor=priya,
        squad=squad,
        slug="summarise",
        first_version={
            "messages": [
                {"role": "user", "content": "For {{ audience }} in {{ words }} words: {{ text }}"}
            ],
            "input_schema": SCHEMA,
            "commit_message": "first",
        },
    )


def test_editor_fields_and_json_stay_in_step(page, login, prompt):
    login(page, "priya", "pw-priya-123")
    page.goto("/squads/demo/prompts/summarise/edit")
    preview = page.locator("#preview")
    expect(page.locator("#preview-status")).to_have_text(
        "Valid — rendered with the example variables."
    )
    expect(preview).to_contain_text("For executives in 5 words: example")
    form = page.locator("#e-variables-form")
    form.get_by_label("Audience").select_option("engineers")
    form.get_by_label("Words").fill("42")
    expect(preview).to_contain_text("For engineers in 42 words: example")
    assert json.loads(page.locator("#e-variables").input_value())["words"] == 42
    # Out of bounds: the preview names the problem.
    form.get_by_label("Words").fill("2")
    expect(page.locator("#preview-status")).to_contain_text("do not fit")
    # Editing the JSON refills the fields.
    page.locator("#e-variables").fill('{"audience": "executives", "words": 7, "text": "Hi"}')
    expect(form.get_by_label("Words")).to_have_value("7")
    expect(form.get_by_label("Text")).to_have_value("Hi")


def test_playground_prefilled_example_runs_without_a_schema_error(page, login, prompt, settings):
    login(page, "priya", "pw-priya-123")
    page.goto("/squads/demo/prompts/summarise/run")
    expect(page.locator("#run-variables-form").get_by_label("Words")).to_have_value("5")
    variables = json.loads(page.locator("#run-variables").input_value())
    from apps.prompts.contracts import validate_variables

    assert validate_variables(SCHEMA, variables) == []
