"""Variables from the input schema: generated examples pass their schema (including the
seeded demo's, whose `"words": 1` once failed minimum 5), the variables form's fields
(selects for enums, number bounds), the form on the editor, the playground and the batch
page, and the sample files for batches and datasets."""

import csv
import io
import json

import pytest
from django.core.management import call_command
from django.test import Client

from apps.evals.models import TestCase as Case
from apps.generation.models import Generation
from apps.prompts.contracts import validate_variables
from apps.prompts.models import PromptVersion
from apps.prompts.variables import example_value, example_variables, sample_file, variable_fields
from apps.reviews.models import ReviewItem
from tests.factories import PASSWORD

SCHEMAS = [
    {"type": "integer", "minimum": 5, "maximum": 200},
    {"type": "integer", "exclusiveMinimum": 10},
    {"type": "integer", "minimum": -20, "maximum": -3},
    {"type": "number", "exclusiveMaximum": 0.5},
    {"type": "number", "minimum": 2.5, "multipleOf": 0.5},
    {"type": "integer", "minimum": 7, "multipleOf": 5},
    {"type": "string", "minLength": 12},
    {"type": "string", "maxLength": 3},
    {"type": "string", "format": "email"},
    {"type": "string", "format": "date"},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uri"},
    {"type": "string", "enum": ["b", "c"]},
    {"enum": [3, "x", None]},
    {"const": "fixed"},
    {"type": "integer", "default": 1, "minimum": 5},  # an invalid default is not used
    {"type": "string", "examples": ["", "ok"], "minLength": 1},  # nor an invalid example
    {"type": ["null", "integer"], "minimum": 3},
    {"type": "boolean"},
    {"type": "array", "items": {"type": "integer", "minimum": 2}, "minItems": 3},
    {"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": True},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 0},
    {"anyOf": [{"type": "integer", "minimum": 9}, {"type": "string"}]},
    {"allOf": [{"type": "string"}, {"minLength": 8}]},
    {
        "type": "object",
        "properties": {
            "customer": {
                "type": "object",
                "properties": {"name": {"type": "string", "minLength": 2}},
                "required": ["name"],
                "additionalProperties": False,
            },
            "tier": {"type": "string", "enum": ["free", "pro"]},
            "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
        },
        "required": ["customer"],
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=[json.dumps(s)[:60] for s in SCHEMAS])
def test_generated_example_passes_its_schema(schema):
    value = example_value(schema)
    assert validate_variables(schema, value) == [], value


def test_demo_schema_example_respects_the_minimum():
    schema = {
        "type": "object",
        "properties": {
            "audience": {"type": "string", "enum": ["executives", "engineers"]},
            "words": {"type": "integer", "minimum": 5, "maximum": 200},
            "text": {"type": "string", "minLength": 1, "maxLength": 20000},
        },
        "required": ["audience", "words", "text"],
    }
    example = example_variables(schema)
    assert example.value == {"audience": "executives", "words": 5, "text": "example"}
    assert example.errors == []


def test_a_pattern_it_cannot_match_is_reported_not_hidden():
    example = example_variables(
        {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}}
    )
    assert [e["path"] for e in example.errors] == ["$.code"]


@pytest.mark.django_db
def test_every_seeded_and_generated_example_passes_its_schema():
    call_command("seed_demo")
    versions = list(PromptVersion.objects.select_related("template"))
    assert versions
    for version in versions:
        assert example_variables(version.input_schema).errors == [], version
    schema = {v.template_id: v.input_schema for v in versions}
    for case in Case.objects.all():
        assert validate_variables(schema[case.template_id], case.variables) == [], case.name
    for generation in Generation.objects.select_related("prompt_version"):
        errors = validate_variables(generation.prompt_version.input_schema, generation.variables)
        assert errors == [], generation.pk
    summarise = next(v for v in versions if v.template.slug == "summarise")
    for item in ReviewItem.objects.all():
        assert validate_variables(summarise.input_schema, item.inputs) == [], item.pk

    # The editor opens green and the playground's prefilled run passes the schema.
    client = Client()
    assert client.login(username="priya", password="studio-demo")
    editor = client.get("/squads/demo/prompts/summarise/edit").content.decode()
    assert "Valid — rendered with the example variables." in editor
    assert "in at most 5 words" in editor


def test_fields_follow_the_schema():
    schema = SCHEMAS[-1]["properties"] | {
        "words": {"type": "integer", "minimum": 5, "maximum": 200, "title": "Word limit"},
        "ratio": {"type": "number", "exclusiveMinimum": 0},
        "urgent": {"type": "boolean"},
        "note": {"type": "string", "maxLength": 80, "description": "Shown to the agent"},
    }
    fields = {
        f.name: f
        for f in variable_fields(
            {"type": "object", "properties": schema, "required": ["words"]},
            {"tier": "pro", "words": 30, "urgent": True},
        )
    }
    assert fields["tier"].kind == "select"
    assert fields["tier"].options == (('"free"', "free"), ('"pro"', "pro"))
    assert fields["tier"].value == '"pro"'
    words = fields["words"]
    assert (words.kind, words.minimum, words.maximum, words.step) == ("integer", 5, 200, "1")
    assert (words.label, words.required, words.value) == ("Word limit", True, "30")
    assert (fields["ratio"].kind, fields["ratio"].minimum, fields["ratio"].step) == (
        "number",
        0,
        "any",
    )
    assert fields["urgent"].kind == "boolean" and fields["urgent"].value == "true"
    assert fields["note"].kind == "text" and fields["note"].max_length == 80
    assert fields["customer"].kind == "json" and fields["items"].kind == "json"


def test_sample_files_read_back_as_valid_rows():
    schema = {
        "type": "object",
        "properties": {
            "audience": {"type": "string", "enum": ["executives", "engineers"]},
            "words": {"type": "integer", "minimum": 5, "maximum": 200},
            "code": {"type": "string", "enum": ["30", "40"]},
        },
        "required": ["audience", "words", "code"],
    }
    rows = [json.loads(line) for line in sample_file(schema, "jsonl").splitlines()]
    assert len(rows) == 3 and len({json.dumps(r) for r in rows}) > 1
    assert all(validate_variables(schema, r) == [] for r in rows)
    from apps.generation.services import _csv_value  # the batch reader's own cell rule

    records = list(csv.DictReader(io.StringIO(sample_file(schema, "csv"))))
    read = [{k: _csv_value(k, v) for k, v in r.items()} for r in records]
    assert read == rows  # "30" stays a string


# --- pages -------------------------------------------------------------------------------


def _login(name: str) -> Client:
    client = Client()
    assert client.login(username=name, password=PASSWORD)
    return client


@pytest.fixture
def template(squad):
    from tests.factories import UserFactory
    from tests.prompts.factories import make_prompt

    return make_prompt(squad, UserFactory(username="engineer"))


@pytest.mark.django_db
def test_editor_and_playground_show_the_schema_form(template):
    client = _login("engineer")
    editor = client.get("/squads/acme/prompts/support/edit").content.decode()
    assert 'data-variables-form data-json="e-variables" hidden' in editor
    assert 'id="e-variables-form-customer"' in editor and 'data-kind="json"' in editor
    assert '<option value="&quot;pro&quot;"' not in editor  # tier is nested in customer
    assert 'src="/static/js/variables-form.js"' in editor
    playground = client.get("/squads/acme/prompts/support/run", headers={"HX-Request": "true"})
    body = playground.content.decode()
    assert 'data-json="run-variables"' in body and 'id="run-variables-form-question"' in body


@pytest.mark.django_db
def test_editor_preview_rebuilds_the_form_when_the_schema_changes(template):
    client = _login("engineer")
    post = {
        "message_role": ["user"],
        "message_content": ["{{ words }}"],
        "input_schema": json.dumps(
            {
                "type": "object",
                "properties": {"words": {"type": "integer", "minimum": 5, "maximum": 9}},
                "required": ["words"],
            }
        ),
        "variables": '{"words": 6}',
        "variables_schema_key": "stale",
    }
    preview = client.post("/squads/acme/prompts/preview", post).content.decode()
    assert 'id="e-variables-form" data-variables-form' in preview
    assert 'hx-swap-oob="outerHTML"' in preview
    assert 'type="number" id="e-variables-form-words"' in preview and 'min="5" max="9"' in preview
    from apps.prompts.variables import schema_key

    post["variables_schema_key"] = schema_key(json.loads(post["input_schema"]))
    same = client.post("/squads/acme/prompts/preview", post).content.decode()
    assert "hx-swap-oob" not in same


@pytest.mark.django_db
def test_batch_page_lists_the_columns_and_links_the_sample(template):
    client = _login("engineer")
    page = client.get("/squads/acme/batches/?prompt=support").content.decode()
    assert (
        "Columns of the file for" in page and '<th scope="row" class="mono">question</th>' in page
    )
    assert 'href="/squads/acme/prompts/support/versions/1/sample.jsonl"' in page
    sample = client.get("/squads/acme/prompts/support/versions/1/sample.jsonl")
    assert sample.status_code == 200
    assert sample["Content-Disposition"] == 'attachment; filename="support-v1-sample.jsonl"'
    schema = template.latest_version.input_schema
    rows = [json.loads(line) for line in sample.content.decode().splitlines()]
    assert rows and all(validate_variables(schema, r) == [] for r in rows)
    assert client.get("/squads/acme/prompts/support/versions/1/sample.xml").status_code == 404
    assert (
        _login("outsider").get("/squads/acme/prompts/support/versions/1/sample.csv").status_code
        == 404
    )


@pytest.mark.django_db
def test_dataset_sample_passes_the_upload_checks(squad, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    from apps.finetune import services as finetune
    from tests.factories import UserFactory

    owner = UserFactory(username="owner")
    for fmt in ("chat", "prompt_completion"):
        finetune.dataset_create(
            actor=owner, squad=squad, slug=fmt.replace("_", "-"), name=fmt, format=fmt
        )
        response = _login("viewer").get(
            f"/squads/acme/datasets/{fmt.replace('_', '-')}/sample.jsonl"
        )
        assert response.status_code == 200
        dataset = squad.datasets.get(slug=fmt.replace("_", "-"))
        version = finetune.dataset_version_upload(
            actor=owner, dataset=dataset, content=response.content, filename="sample.jsonl"
        )
        assert version.row_count == 2


NESTED_300 = {
    "type": "array",
    "minItems": 300,
    "items": {
        "type": "array",
        "minItems": 300,
        "items": {"type": "array", "minItems": 300, "items": {"type": "string"}},
    },
}
HUGE_SCHEMAS = {
    # OverflowError: math.ceil(1e308 / 0.1) was a 500.
    "overflowing-bound": {"type": "number", "minimum": 1e308, "multipleOf": 0.1},
    "long-string": {"type": "string", "minLength": 50_000_000},  # a 150 MB sample file
    "nested-arrays": NESTED_300,  # 486 MB in 10 s
}


@pytest.mark.parametrize("node", HUGE_SCHEMAS.values(), ids=HUGE_SCHEMAS.keys())
def test_an_example_stays_small_and_says_where_it_was_cut(node):
    from apps.prompts.variables import EXAMPLE_LIMIT

    schema = {"type": "object", "properties": {"x": node}, "required": ["x"]}
    example = example_variables(schema)
    assert len(json.dumps(example.value)) <= EXAMPLE_LIMIT + 100
    if node is HUGE_SCHEMAS["overflowing-bound"]:
        assert example.value == {"x": 1e308} and example.cut == []
    else:
        assert example.cut and example.cut[0].startswith("$.x")
        assert example.errors  # best effort: the validator still says what falls short
    assert len(sample_file(schema, "jsonl")) < 64 * 1024
    assert len(sample_file(schema, "csv")) < 64 * 1024


@pytest.mark.django_db
@pytest.mark.parametrize("node", HUGE_SCHEMAS.values(), ids=HUGE_SCHEMAS.keys())
def test_sample_files_and_the_playground_stay_small_for_demanding_schemas(template, node):
    schema = {"type": "object", "properties": {"x": node}, "required": ["x"]}
    PromptVersion.objects.filter(pk=template.latest_version.pk).update(input_schema=schema)
    client = _login("engineer")
    base = "/squads/acme/prompts/support"
    for fmt in ("jsonl", "csv"):
        sample = client.get(f"{base}/versions/1/sample.{fmt}")
        assert sample.status_code == 200 and len(sample.content) < 64 * 1024
        cut = sample.headers.get("X-Sample-Cut-Short")
        assert (cut is None) == (node is HUGE_SCHEMAS["overflowing-bound"])
    run = client.get(f"{base}/run?version=1", headers={"HX-Request": "true"})
    assert run.status_code == 200 and len(run.content) < 256 * 1024
    page = client.get("/squads/acme/batches/?prompt=support").content.decode()
    assert ("The sample rows are cut short" in page) == (cut is not None)
