import json
from typing import Any

import pytest
from django.test import Client

from apps.audit.models import AuditEvent
from apps.prompts import services
from apps.prompts.models import Label, LabelMove, PromptTemplate, PromptVersion
from tests.factories import PASSWORD, UserFactory
from tests.reviews.factories import approve

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}},
    "required": ["name"],
}
MESSAGES = [
    {"role": "system", "content": "You are polite."},
    {"role": "user", "content": "Say hello to {{ name }}."},
]


def _client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


def _user(username: str):
    return UserFactory(username=username)


def _prompt(squad, slug: str = "greet", *, actor: str = "engineer", tags=("support",), **content):
    return services.prompt_template_create(
        actor=_user(actor),
        squad=squad,
        slug=slug,
        description=f"The {slug} prompt",
        tags=list(tags),
        first_version={
            "messages": MESSAGES,
            "input_schema": SCHEMA,
            "commit_message": "first draft",
            **content,
        },
    )


def _version(template, *, actor: str = "engineer", commit: str = "next", **content):
    base = {"messages": MESSAGES, "input_schema": SCHEMA}
    return services.prompt_version_create(
        actor=_user(actor), template=template, commit_message=commit, **{**base, **content}
    )


def _form(messages=MESSAGES, **fields: str) -> dict[str, Any]:
    """The editor's form as a browser posts it."""
    data = {
        "message_role": [m["role"] for m in messages],
        "message_content": [m["content"] for m in messages],
        "input_schema": json.dumps(SCHEMA, indent=2),
        "output_format": "text",
        "output_schema": "",
        "target": "local",
        "temperature": "0.7",
        "top_p": "1.0",
        "max_new_tokens": "256",
        "stop": "",
        "seed": "",
        "fallback_target": "",
        "commit_message": "",
        "variables": '{"name": "Ada"}',
    }
    return {**data, **fields}


def _counts() -> tuple[int, ...]:
    return (
        PromptTemplate.objects.count(),
        PromptVersion.objects.count(),
        Label.objects.count(),
        AuditEvent.objects.count(),
    )


# --- list ---------------------------------------------------------------------------


def test_list_search_and_filters(squad):
    greet = _prompt(squad, "greet", tags=["support", "email"])
    _prompt(squad, "summarise", actor="owner", tags=["legal"])
    approve(greet.latest_version)
    services.label_move(
        actor=_user("owner"), template=greet, name="production", version=greet.latest_version
    )
    client = _client("engineer")

    page = client.get("/squads/acme/prompts/").content.decode()
    assert 'id="prompt-greet"' in page and 'id="prompt-summarise"' in page
    assert "v1" in page and "by engineer" in page and "by owner" in page
    assert "production → v1" in page
    assert "New prompt" in page

    def slugs(**query: str) -> set[str]:
        response = client.get("/squads/acme/prompts/", query, headers=HTMX)
        body = response.content.decode()
        assert response.status_code == 200 and "<html" not in body  # the results partial
        assert body.lstrip().startswith('<section class="card" id="prompt-results"')
        return {s for s in ("greet", "summarise") if f'id="prompt-{s}"' in body}

    assert slugs(q="summ") == {"summarise"}
    assert slugs(q="THE GREET") == {"greet"}  # description, case-insensitive
    assert slugs(tag="email") == {"greet"}
    assert slugs(tag="emai") == set()  # a whole tag, not a substring
    assert slugs(label="production") == {"greet"}
    assert slugs(author="owner") == {"summarise"}
    assert slugs(author="owner", tag="support") == set()
    assert (
        "No prompt matches these filters."
        in client.get("/squads/acme/prompts/", {"q": "zzz"}).content.decode()
    )


def test_list_query_count_is_fixed(squad, django_assert_max_num_queries):
    owner = _user("owner")
    client = _client("viewer")
    client.get("/squads/acme/prompts/")  # warms the permission cache

    def add(i: int) -> None:
        author = "owner" if i % 2 else "engineer"
        template = _prompt(squad, f"p{i}", actor=author)
        v2 = _version(template, actor=author, messages=[{"role": "user", "content": f"{i}"}])
        approve(v2)
        for name in ("staging", "production"):
            services.label_move(actor=owner, template=template, name=name, version=v2)

    add(0)
    with django_assert_max_num_queries(8) as ctx:
        client.get("/squads/acme/prompts/")
    for i in range(1, 12):
        add(i)
    with django_assert_max_num_queries(len(ctx.captured_queries)):
        response = client.get("/squads/acme/prompts/")
    assert response.content.count(b'id="prompt-p') == 12
    assert response.content.count(b"production \xe2\x86\x92 v2") == 12
    assert response.content.count(b"by owner") == 6 and response.content.count(b"by engineer") == 6


# --- editor preview -----------------------------------------------------------------


def test_preview_renders_the_messages_and_writes_nothing(squad):
    _prompt(squad)
    client = _client("engineer")
    before = _counts()
    response = client.post("/squads/acme/prompts/preview", _form(), headers=HTMX)
    body = response.content.decode()
    assert response.status_code == 200 and "<html" not in body
    assert "Valid — rendered with the example variables." in body
    assert "<pre>Say hello to Ada.</pre>" in body and "<pre>You are polite.</pre>" in body
    assert "<code>name</code>" in body  # variables used
    assert _counts() == before


def test_preview_shows_variable_errors_with_their_json_path(squad):
    client = _client("engineer")
    body = client.post("/squads/acme/prompts/preview", _form(variables='{"name": 5}')).content
    body = body.decode()
    assert "do not fit" in body
    assert "<code>$.name</code> 5 is not of type &#x27;string&#x27;" in body
    body = client.post("/squads/acme/prompts/preview", _form(variables="{}")).content.decode()
    assert "<code>$</code> &#x27;name&#x27; is a required property" in body
    body = client.post("/squads/acme/prompts/preview", _form(variables="[1]")).content.decode()
    assert "Variables must be a JSON object" in body


def test_preview_shows_schema_and_template_errors_in_place(squad):
    client = _client("engineer")
    broken = [{"role": "user", "content": "Hello\nSay hi to {{ name }"}]
    body = client.post("/squads/acme/prompts/preview", _form(messages=broken)).content.decode()
    # Numbered from 1, as the editor's message rows are.
    assert "<code>Message 1</code>" in body and "messages[0]" not in body
    assert "line 2, column 19" in body and "template syntax error" in body
    # The broken message may use 'name': no false "never used" warning.
    assert "never used" not in body

    undeclared = [{"role": "user", "content": "Hi {{ name }}, re {{ topic }}"}]
    body = client.post("/squads/acme/prompts/preview", _form(messages=undeclared)).content
    assert b"variable &#x27;topic&#x27; is used in the messages but not declared" in body

    bad_schema = json.dumps({"type": "object", "properties": {"name": {"type": "text"}}})
    body = client.post("/squads/acme/prompts/preview", _form(input_schema=bad_schema)).content
    assert b"<code>input_schema.properties.name.type</code>" in body
    assert b"invalid JSON Schema" in body

    body = client.post("/squads/acme/prompts/preview", _form(temperature="hot")).content.decode()
    assert "<code>model.temperature</code> must be a number (got &#x27;hot&#x27;)" in body


def test_preview_names_the_field_with_invalid_json(squad):
    client = _client("engineer")
    response = client.post(
        "/squads/acme/prompts/preview", _form(input_schema='{\n  "type": "object",\n  oops\n}')
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "<code>input_schema</code>" in body and "line 3, column 3" in body
    assert (
        "Input schema is not valid JSON: Expecting property name enclosed in double quotes" in body
    )
    body = client.post("/squads/acme/prompts/preview", _form(variables='{"name": ')).content
    assert b"Variables is not valid JSON" in body
    body = client.post("/squads/acme/prompts/preview", _form(output_schema="{")).content
    assert b"Output schema is not valid JSON" in body


HUGE_SCHEMA = '{"type": "object", "maximum": ' + "9" * 5000 + "}"


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("input_schema", HUGE_SCHEMA, "Input schema is not usable JSON: a number has more than"),
        ("output_schema", HUGE_SCHEMA, "Output schema is not usable JSON: a number has more"),
        ("variables", '{"name": ' + "9" * 5000 + "}", "Variables is not usable JSON: a number"),
        ("variables", "[" * 5000 + "]" * 5000, "Variables is nested more than 64 levels deep"),
        ("input_schema", "[" * 5000 + "]" * 5000, "Input schema is nested more than 64 levels"),
    ],
)
def test_preview_and_edit_name_a_huge_number_or_deep_nesting(squad, field, text, message):
    # A plain ValueError (past 4,300 digits) or a RecursionError (in the variables form
    # built from the input schema) were 500s.
    template = _prompt(squad)
    client = _client("engineer")
    fields = {field: text}
    if field == "output_schema":
        fields["output_format"] = "json"
    preview = client.post("/squads/acme/prompts/preview", _form(**fields))
    assert preview.status_code == 200 and message in preview.content.decode()
    edit = client.post(
        "/squads/acme/prompts/greet/edit",
        _form(commit_message="big", parent_number="1", **fields),
        headers=HTMX,
    )
    assert edit.status_code == 422 and message in edit.content.decode()
    assert template.versions.count() == 1


def test_preview_survives_python_errors_in_expressions(squad):
    sums = [{"role": "user", "content": "{{ name + 1 }}"}]
    response = _client("engineer").post("/squads/acme/prompts/preview", _form(messages=sums))
    assert response.status_code == 200
    assert b"can only concatenate str" in response.content


def test_message_row_partial_and_remove(squad):
    client = _client("engineer")
    row = client.get(
        "/squads/acme/prompts/message-row", {"message_role": ["system", "user"]}, headers=HTMX
    ).content.decode()
    assert row.lstrip().startswith('<fieldset class="message-row"')
    assert "<legend>Message 3</legend>" in row and 'name="message_content"' in row
    removed = client.get("/squads/acme/prompts/message-row", {"remove": "1"}, headers=HTMX)
    assert removed.content == b""
    assert json.loads(removed["HX-Trigger-After-Swap"]) == {"messages-changed": {}}


# --- saving -------------------------------------------------------------------------


def test_new_prompt_through_the_form(squad):
    client = _client("engineer")
    page = client.get("/squads/acme/prompts/new").content.decode()
    assert 'hx-post="/squads/acme/prompts/preview"' in page
    assert 'hx-trigger="input changed delay:500ms from:closest form' in page
    assert 'aria-live="polite"' in page and '<label for="e-input-schema">' in page

    form = _form(slug="greet", description="Greets", tags="support, email", commit_message="v1")
    form["message_content"] = ["You are polite.", "Say hello\r\nto {{ name }}."]
    response = client.post("/squads/acme/prompts/new", form, headers=HTMX)
    assert response.status_code == 200 and response["HX-Redirect"] == "/squads/acme/prompts/greet/"
    template = PromptTemplate.objects.get(slug="greet")
    assert template.tags == ["email", "support"] and template.description == "Greets"
    version = template.latest_version
    assert version.number == 1 and version.author.username == "engineer"
    assert version.messages[1]["content"] == "Say hello\nto {{ name }}."  # no CRLF stored
    assert version.model_settings["temperature"] == 0.7 and version.model_settings["seed"] is None

    taken = client.post("/squads/acme/prompts/new", {**form, "description": "Again"})
    body = taken.content.decode()
    assert taken.status_code == 409 and "A prompt &#x27;greet&#x27; already exists" in body
    assert 'id="e-slug" name="slug" maxlength="80" required value="greet" aria-invalid="true"' in (
        body
    )
    assert ">Again</textarea>" in body  # the user's input is kept
    assert PromptTemplate.objects.count() == 1


def test_refused_first_version_leaves_nothing_and_keeps_the_input(squad):
    client = _client("engineer")
    broken = [{"role": "user", "content": "Hi {{ name"}]
    response = client.post(
        "/squads/acme/prompts/new",
        _form(messages=broken, slug="greet", commit_message="v1"),
        headers=HTMX,
    )
    body = response.content.decode()
    assert response.status_code == 422 and "<html" not in body
    assert body.lstrip().startswith('<form id="editor"')
    assert 'aria-invalid="true" aria-describedby="msg-0-error"' in body
    assert "template syntax error at line 1" in body
    assert "\nHi {{ name</textarea>" in body
    assert not PromptTemplate.objects.exists()


def test_edit_saves_the_next_version_and_refuses_identical_content(squad):
    template = _prompt(squad)
    client = _client("engineer")
    page = client.get("/squads/acme/prompts/greet/edit").content.decode()
    assert "Say hello to {{ name }}.</textarea>" in page
    assert '<input type="hidden" name="parent_number" value="1">' in page
    assert "<pre>Say hello to example.</pre>" in page  # preview with example variables

    same = client.post(
        "/squads/acme/prompts/greet/edit",
        _form(commit_message="no-op", parent_number="1"),
        headers=HTMX,
    )
    assert same.status_code == 409
    assert "Nothing changed: the content is identical to version 1." in same.content.decode()
    assert 'value="no-op"' in same.content.decode()

    changed = [MESSAGES[0], {"role": "user", "content": "Greet {{ name }} warmly."}]
    response = client.post(
        "/squads/acme/prompts/greet/edit",
        _form(messages=changed, commit_message="warmer", parent_number="1", stop="END, ###"),
    )
    assert response.status_code == 302 and response["Location"] == "/squads/acme/prompts/greet/"
    v2 = template.versions.get(number=2)
    assert v2.parent.number == 1 and v2.commit_message == "warmer"
    assert v2.model_settings["stop"] == ["END", "###"]
    detail = client.get("/squads/acme/prompts/greet/").content.decode()
    assert "Current version: v2" in detail and "Greet {{ name }} warmly." in detail

    # Editing from an older version records it as the parent.
    page = client.get("/squads/acme/prompts/greet/edit?from=1").content.decode()
    assert "Say hello to {{ name }}.</textarea>" in page
    older = [MESSAGES[0], {"role": "user", "content": "Hello, {{ name }}!"}]
    client.post(
        "/squads/acme/prompts/greet/edit",
        _form(messages=older, commit_message="branch", parent_number="1"),
    )
    assert template.versions.get(number=3).parent.number == 1


def test_edit_errors_are_shown_inline(squad):
    _prompt(squad)
    client = _client("engineer")
    response = client.post(
        "/squads/acme/prompts/greet/edit",
        _form(commit_message="", parent_number="1", input_schema="{"),
        headers=HTMX,
    )
    body = response.content.decode()
    assert response.status_code == 422
    assert "Input schema is not valid JSON" in body
    assert (
        'id="e-input-schema" name="input_schema" rows="12" class="mono" spellcheck="false" '
        in (body)
        and 'aria-describedby="e-input-schema-error"' in body
    )
    no_commit = client.post(
        "/squads/acme/prompts/greet/edit", _form(parent_number="1"), headers=HTMX
    ).content.decode()
    assert "Say what changed in a commit message." in no_commit
    assert PromptVersion.objects.count() == 1


# --- template page, labels ----------------------------------------------------------


def test_template_page_shows_content_history_and_labels(squad):
    template = _prompt(squad)
    _version(template, commit="warmer", messages=[{"role": "user", "content": "Hi {{ name }}"}])
    approve(template.versions.get(number=1))
    services.label_move(
        actor=_user("owner"),
        template=template,
        name="production",
        version=template.versions.get(number=1),
        note="go live",
    )
    page = _client("engineer").get("/squads/acme/prompts/greet/").content.decode()
    assert "Current version: v2" in page
    assert 'href="/squads/acme/prompts/greet/versions/1"' in page
    assert "/squads/acme/prompts/greet/diff?from_version=1&amp;to_version=2" in page
    assert "go live" in page and ">protected</span>" in page
    # Engineers and owners may move production (to an approved version); viewers may not.
    assert 'id="lv-production"' in page and 'id="new-label-name"' in page
    viewer_page = _client("viewer").get("/squads/acme/prompts/greet/").content.decode()
    assert 'id="lv-production"' not in viewer_page


def test_label_move_and_roll_back_through_the_panel(squad):
    template = _prompt(squad)
    _version(template, commit="second", messages=[{"role": "user", "content": "Hi {{ name }}"}])
    client = _client("engineer")
    created = client.post(
        "/squads/acme/prompts/greet/labels/",
        {"name": "staging", "version": "2", "note": "try it"},
        headers=HTMX,
    )
    body = created.content.decode()
    assert created.status_code == 200 and "<html" not in body
    assert body.lstrip().startswith('<section class="card" id="label-panel"')
    assert "Label staging now points at v2." in body
    assert 'id="history" aria-labelledby="history-title" hx-swap-oob="true"' in body
    rolled = client.post(
        "/squads/acme/prompts/greet/labels/staging",
        {"version": "1", "note": "v2 is wrong"},
        headers=HTMX,
    ).content.decode()
    assert "Label staging now points at v1." in rolled
    label = Label.objects.get(template=template, name="staging")
    assert label.version.number == 1
    moves = [
        (m.from_version and m.from_version.number, m.to_version.number, m.note)
        for m in LabelMove.objects.filter(label=label)
    ]
    assert moves == [(2, 1, "v2 is wrong"), (None, 2, "try it")]
    again = client.post("/squads/acme/prompts/greet/labels/staging", {"version": "1"}, headers=HTMX)
    assert again.status_code == 409 and b"already points at version 1" in again.content
    missing = client.post(
        "/squads/acme/prompts/greet/labels/staging", {"version": "9"}, headers=HTMX
    )
    assert missing.status_code == 404 and b"has no version 9" in missing.content
    assert b'id="label-panel"' in missing.content
    # Without htmx: a redirect back to the page.
    plain = client.post("/squads/acme/prompts/greet/labels/staging", {"version": "2"})
    assert plain.status_code == 302 and plain["Location"] == "/squads/acme/prompts/greet/"


def test_protected_label_is_refused_inline_until_the_version_is_approved(squad):
    template = _prompt(squad)
    response = _client("engineer").post(
        "/squads/acme/prompts/greet/labels/production", {"version": "1"}, headers=HTMX
    )
    body = response.content.decode()
    assert response.status_code == 409 and "<html" not in body
    assert (
        'role="alert" id="label-error">Label &#x27;production&#x27; is protected: version 1 '
        "is not approved" in body
    )
    assert not Label.objects.filter(template=template).exists()
    approve(template.latest_version)
    ok = _client("engineer").post(
        "/squads/acme/prompts/greet/labels/production", {"version": "1"}, headers=HTMX
    )
    assert ok.status_code == 200 and Label.objects.get(template=template).name == "production"


def test_template_page_query_count_is_fixed(squad, django_assert_max_num_queries):
    owner = _user("owner")
    template = _prompt(squad)
    client = _client("owner")
    client.get("/squads/acme/prompts/greet/")  # warms the permission cache

    def add(i: int) -> None:
        version = _version(template, commit=f"v{i}", messages=[{"role": "user", "content": f"{i}"}])
        approve(version)
        for name in ("production", "staging"):
            services.label_move(actor=owner, template=template, name=name, version=version)

    add(2)
    # 12: the navigation's review counts (waiting requests, unread notifications) are two.
    with django_assert_max_num_queries(12) as ctx:
        client.get("/squads/acme/prompts/greet/")
    for i in range(3, 12):
        add(i)
    services.label_move(
        actor=owner, template=template, name="canary", version=template.versions.get(number=1)
    )
    with django_assert_max_num_queries(len(ctx.captured_queries)):
        response = client.get("/squads/acme/prompts/greet/")
    assert response.content.count(b'<li id="v') == 11
    assert response.content.count(b'id="lv-') == 3
    assert response.content.count(b"<td>v11</td>") == 2  # production and staging histories


# --- version page and diff ----------------------------------------------------------


def test_version_page_is_read_only_and_pretty(squad):
    template = _prompt(squad, output_format="json", output_schema={"type": "object"})
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "tone": {"type": "string"}}}
    _version(template, input_schema={**schema, "required": ["name", "tone"]})
    page = _client("viewer").get("/squads/acme/prompts/greet/versions/2").content.decode()
    assert '<pre class="json">{\n  &quot;type&quot;: &quot;object&quot;,' in page
    assert "required variable &#x27;tone&#x27; is never used in the messages" in page
    assert "Edit from this version" not in page and "<form" not in page.split("<main")[1]
    assert _client("viewer").get("/squads/acme/prompts/greet/versions/7").status_code == 404


def test_diff_marks_an_added_required_variable_as_breaking(squad):
    template = _prompt(squad)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}, "tone": {"type": "string"}},
        "required": ["name", "tone"],
    }
    messages = [
        MESSAGES[0],
        {"role": "user", "content": "Say hello to {{ name }}.\nBe {{ tone }}."},
    ]
    _version(template, input_schema=schema, messages=messages, model={"temperature": 0.2})
    client = _client("viewer")
    page = client.get("/squads/acme/prompts/greet/diff?from_version=1&to_version=2")
    body = page.content.decode()
    assert page.status_code == 200
    assert (
        '<p class="verdict breaking"><span class="badge breaking">BREAKING</span> 1 change' in body
    )
    assert '<td class="mono">$.tone</td><td>required variable added</td>' in body
    assert '<tr class="diff-added">' in body and "Be {{ tone }}." in body
    assert (
        '<th scope="row" class="mono">model.temperature</th><td class="mono old">0.7</td>' in body
    )
    # Either order, any two versions; htmx swaps just the body.
    back = client.get(
        "/squads/acme/prompts/greet/diff", {"from_version": 2, "to_version": 1}, headers=HTMX
    ).content.decode()
    assert back.lstrip().startswith('<div id="diff-body"') and "variable removed" in back
    # Defaults: the latest version against the one before it.
    assert "v1 → v2" in client.get("/squads/acme/prompts/greet/diff").content.decode()
    assert client.get("/squads/acme/prompts/greet/diff?from_version=x").status_code == 422


def test_diff_of_an_optional_variable_is_compatible(squad):
    template = _prompt(squad)
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "tone": {"type": "string"}}}
    _version(template, input_schema=schema)
    body = _client("viewer").get("/squads/acme/prompts/greet/diff").content.decode()
    assert '<p class="verdict compatible">' in body and "BREAKING" not in body
    assert "optional variable added" in body


# --- who may do what ----------------------------------------------------------------


@pytest.mark.parametrize("username", ["sme", "viewer"])
def test_read_only_roles_see_no_edit_controls_and_are_refused(squad, username):
    _prompt(squad)
    client = _client(username)
    listing = client.get("/squads/acme/prompts/").content.decode()
    assert "greet" in listing and "New prompt" not in listing
    detail = client.get("/squads/acme/prompts/greet/").content.decode()
    assert "Current version: v1" in detail
    for control in ("/edit", 'id="new-label-name"', 'id="lv-', "Edit from here"):
        assert control not in detail
    assert client.get("/squads/acme/prompts/new").status_code == 403
    assert client.get("/squads/acme/prompts/greet/edit").status_code == 403
    before = _counts()
    assert (
        client.post("/squads/acme/prompts/new", _form(slug="x", commit_message="x")).status_code
        == 403
    )
    edit = client.post("/squads/acme/prompts/greet/edit", _form(commit_message="x"))
    assert edit.status_code == 403
    label = client.post("/squads/acme/prompts/greet/labels/staging", {"version": "1"}, headers=HTMX)
    assert label.status_code == 403 and b'id="label-error"' in label.content
    assert _counts() == before


def test_outsider_gets_404_everywhere(squad):
    _prompt(squad)
    client = _client("outsider")
    for url in (
        "/squads/acme/prompts/",
        "/squads/acme/prompts/new",
        "/squads/acme/prompts/greet/",
        "/squads/acme/prompts/greet/edit",
        "/squads/acme/prompts/greet/versions/1",
        "/squads/acme/prompts/greet/diff",
        "/squads/acme/prompts/message-row",
    ):
        assert client.get(url).status_code == 404, url
    for url in (
        "/squads/acme/prompts/preview",
        "/squads/acme/prompts/new",
        "/squads/acme/prompts/greet/edit",
        "/squads/acme/prompts/greet/labels/staging",
    ):
        assert client.post(url, _form(version="1")).status_code == 404, url
    assert Client().get("/squads/acme/prompts/").status_code == 302  # login required
