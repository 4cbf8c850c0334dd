"""The page frame (issue 16): a friendly 405, the favicon, the flash after a save, and
the actions that lead from one area to the next ("Evaluate", "Fine-tune on this version")."""

import json
import re

import pytest
from django.test import Client

from apps.finetune import services as datasets
from tests.factories import PASSWORD, UserFactory
from tests.prompts.factories import make_prompt

pytestmark = pytest.mark.django_db


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
MESSAGES = [
    {"role": "system", "content": "You are polite."},
    {"role": "user", "content": "Say hello to {{ name }}."},
]


def _prompt(squad):
    """Prompt 'greet' version 1, written by the engineer."""
    return make_prompt(
        squad,
        UserFactory(username="engineer"),
        slug="greet",
        messages=MESSAGES,
        input_schema=SCHEMA,
    )


def _editor_form(messages: list[dict[str, str]], **fields: str) -> dict:
    """The editor's form as a browser posts it."""
    return {
        "message_role": [m["role"] for m in messages],
        "message_content": [m["content"] for m in messages],
        "input_schema": json.dumps(SCHEMA),
        "output_format": "text",
        "output_schema": "",
        "target": "local",
        "temperature": "0.7",
        "top_p": "1.0",
        "max_new_tokens": "256",
        "stop": "",
        "seed": "",
        "fallback_target": "",
        "variables": '{"name": "Ada"}',
        **fields,
    }


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def test_a_get_on_a_form_address_is_a_page_in_the_layout_not_a_bare_405(squad):
    response = _client("owner").get("/squads/acme/settings")
    assert response.status_code == 405 and response["Allow"] == "POST"
    body = response.content.decode()
    assert "<html" in body and 'class="squad-nav"' in body
    assert "This address receives a form; it is not a page to open." in body
    # The API keeps its own answers.
    api = _client("owner").delete("/api/v1/audit/events")
    assert api.status_code == 405 and "<html" not in api.content.decode()


def test_favicon_is_linked_and_served(squad):
    page = _client("viewer").get("/squads/acme/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
    redirect = Client().get("/favicon.ico")
    assert redirect.status_code == 302 and redirect["Location"] == "/static/favicon.svg"


def test_saving_a_version_says_so_on_the_next_page(squad):
    _prompt(squad)
    client = _client("engineer")
    changed = [MESSAGES[0], {"role": "user", "content": "Greet {{ name }} warmly."}]
    response = client.post(
        "/squads/acme/prompts/greet/edit",
        _editor_form(changed, commit_message="warmer", parent_number="1"),
        follow=True,
    )
    body = response.content.decode()
    assert '<ul class="flash" role="status">' in body and "Saved v2." in body
    assert "Saved v2." not in client.get("/squads/acme/prompts/greet/").content.decode()


def test_editor_warns_before_unsaved_changes_are_left(squad):
    _prompt(squad)
    page = _client("engineer").get("/squads/acme/prompts/greet/edit").content.decode()
    assert 'id="editor" class="prompt-editor" data-warn-unsaved' in page
    assert re.search(r'<script src="/static/js/studio\.js" nonce="[^"]+" defer></script>', page)


@pytest.mark.parametrize(("role", "shown"), [("engineer", True), ("sme", False)])
def test_evaluate_on_a_version_leads_to_the_run_form_with_that_version(squad, role, shown):
    template = _prompt(squad)
    client = _client(role)
    page = client.get(f"/squads/acme/prompts/greet/versions/{template.latest_version.number}")
    link = "/squads/acme/evals/prompts/greet/?version=1#run-title"
    assert (f'href="{link}">Evaluate</a>' in page.content.decode()) is shown
    if shown:
        cases = client.get(link.split("#")[0]).content.decode()
        assert '<option value="1" selected>v1' in cases


def test_squad_evals_page_lists_prompts_with_their_cases(squad):
    _prompt(squad)
    body = _client("viewer").get("/squads/acme/evals/").content.decode()
    assert 'href="/squads/acme/evals/prompts/greet/">greet</a>' in body
    assert "No eval runs yet." in body


@pytest.mark.parametrize(("role", "shown"), [("engineer", True), ("viewer", False)])
def test_fine_tune_on_this_version_prefills_the_job_form(squad, role, shown):
    engineer = UserFactory(username="engineer")
    dataset = datasets.dataset_create(
        actor=engineer, squad=squad, slug="tickets", name="Tickets", format="chat"
    )
    row = (
        '{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a"}]}'
    )
    rows = "".join(row % i + "\n" for i in range(4)).encode()
    datasets.dataset_version_upload(
        actor=engineer,
        dataset=dataset,
        content=rows,
        filename="rows.jsonl",
        commit_message="first",
    )
    client = _client(role)
    page = client.get("/squads/acme/datasets/tickets/").content.decode()
    link = "/squads/acme/finetune/?dataset=tickets&amp;version=1#new-job"
    assert (f'href="{link}">Fine-tune on this version</a>' in page) is shown
    if shown:
        form = client.get("/squads/acme/finetune/?dataset=tickets&version=1").content.decode()
        assert '<option value="tickets" selected>' in form
        assert 'name="version" min="1" value="1"' in form
