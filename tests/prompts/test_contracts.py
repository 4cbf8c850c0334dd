import pytest

from apps.prompts.contracts import RenderFailed, render_messages
from apps.prompts.services import check_content
from tests.prompts.factories import MESSAGES, SCHEMA


def render(variables, messages=MESSAGES, schema=SCHEMA):
    return render_messages(messages, schema, variables)


def errors_of(variables, **kw) -> list[dict]:
    with pytest.raises(RenderFailed) as info:
        render(variables, **kw)
    return info.value.extra


def test_render_happy_path_with_nested_objects_arrays_and_unicode():
    out = render(
        {"customer": {"name": "Zoë 🚀", "tier": "pro"}, "items": [1, 2], "question": "¿Qué?"}
    )
    assert out == [
        {"role": "system", "content": "You help Zoë 🚀 (pro)."},
        {"role": "user", "content": "#1 #2 ¿Qué?"},
    ]


def test_missing_variable_is_reported_with_its_path():
    errors = errors_of({"customer": {}})
    assert {e["path"] for e in errors} == {"$", "$.customer"}
    assert any("'question' is a required property" in e["message"] for e in errors)
    assert any("'name' is a required property" in e["message"] for e in errors)


def test_every_wrong_type_is_reported():
    errors = errors_of(
        {"customer": {"name": 7, "tier": "gold"}, "items": ["a", 2, 3.5], "question": None}
    )
    paths = sorted(e["path"] for e in errors)
    assert paths == [
        "$.customer.name",
        "$.customer.tier",
        "$.items[0]",
        "$.items[2]",
        "$.question",
    ]


def test_array_bounds_and_non_object_variables():
    assert (
        errors_of({"customer": {"name": "x"}, "question": "q", "items": list(range(6))})[0]["path"]
        == "$.items"
    )
    assert errors_of(["not", "an", "object"])[0]["path"] == "$"


def test_very_long_input_renders_and_oversized_output_is_refused():
    long_text = "x" * 150_000
    out = render({"customer": {"name": "a"}, "question": long_text})
    assert len(out[1]["content"]) == 150_000
    huge = [{"role": "user", "content": "{% for i in range(20) %}{{ q }}{% endfor %}"}]
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    with pytest.raises(RenderFailed, match="exceeds"):
        render_messages(huge, schema, {"q": "y" * 100_000})


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ q.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ q.format.__globals__ }}",
        "{% set x = q.__class__ %}{{ x }}",
        "{{ range.__self__ }}",
    ],
)
def test_sandbox_escape_attempts_are_blocked(template):
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    with pytest.raises(RenderFailed) as info:
        render_messages([{"role": "user", "content": template}], schema, {"q": "hi"})
    text = str(info.value).lower()
    assert "unsafe" in text or "undefined" in text or "not" in text


def test_undefined_inside_template_is_an_error_not_an_empty_string():
    schema = {"type": "object", "properties": {"q": {"type": "object"}}}
    with pytest.raises(RenderFailed, match="missing"):
        render_messages([{"role": "user", "content": "{{ q.missing }}"}], schema, {"q": {}})


def test_raw_blocks_keep_literal_braces():
    messages = [
        {"role": "user", "content": 'Reply as {% raw %}{"label": "{{x}}"}{% endraw %} for {{ q }}'}
    ]
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    _, report = check_content(messages=messages, input_schema=schema)
    assert report.errors == [] and report.variables == {"q"}
    assert render_messages(messages, schema, {"q": "it"})[0]["content"] == (
        'Reply as {"label": "{{x}}"} for it'
    )


@pytest.mark.parametrize(
    ("content", "line", "column"),
    [
        ("Hello {{ name }", 1, 15),
        ("line one\n  {{ name | nosuchfilter }}", 2, 13),
        ("{% if name %}\nunclosed", 1, 1),  # points at the block left open
        ("ok\n{% frobnicate %}", 2, 4),
    ],
)
def test_syntax_errors_are_refused_with_line_and_column(content, line, column):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    _, report = check_content(messages=[{"role": "user", "content": content}], input_schema=schema)
    assert len(report.errors) == 1
    error = report.errors[0]
    assert error["where"] == "messages[0].content"
    assert (error["line"], error["column"]) == (line, column)
    assert f"line {line}, column {column}" in error["message"]


def test_undeclared_and_unused_variables_are_reported_at_save():
    schema = {
        "type": "object",
        "properties": {"used": {"type": "string"}, "idle": {"type": "string"}},
        "required": ["used", "idle"],
    }
    messages = [{"role": "user", "content": "{{ used }} {{ ghost }}"}]
    _, report = check_content(messages=messages, input_schema=schema)
    assert [e["message"] for e in report.errors] == [
        "variable 'ghost' is used in the messages but not declared in the input schema"
    ]
    assert [w["message"] for w in report.warnings] == [
        "required variable 'idle' is never used in the messages"
    ]


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"input_schema": {"type": "objekt"}}, "input_schema.type"),
        (
            {"input_schema": {"type": "object", "properties": {"a": {"minLength": -1}}}},
            "input_schema.properties.a.minLength",
        ),
        ({"input_schema": {"type": "string"}}, "input_schema"),
        ({"input_schema": []}, "input_schema"),
        ({"output_schema": {"type": 5}, "output_format": "json"}, "output_schema.type"),
        ({"output_schema": {"type": "object"}, "output_format": "text"}, "output_schema"),
        ({"output_format": "xml"}, "output_format"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages[0]"),
        ({"model": {"temperature": 3}}, "model.temperature"),
        ({"model": {"max_new_tokens": 0}}, "model.max_new_tokens"),
        ({"model": {"top_p": "high"}}, "model.top_p"),
        ({"model": {"seed": 1.5}}, "model.seed"),
        ({"model": {"stop": "###"}}, "model.stop"),
        ({"model": {"target": ""}}, "model.target"),
        ({"model": {"beam": 4}}, "model"),
        ({"fallback_target": "local"}, "fallback_target"),
    ],
)
def test_invalid_content_is_refused_with_where(kwargs, where):
    base = {
        "messages": [{"role": "user", "content": "hi"}],
        "input_schema": {"type": "object", "properties": {}},
    }
    _, report = check_content(**{**base, **kwargs})
    assert report.errors, kwargs
    assert report.errors[0]["where"] == where, report.errors


@pytest.mark.parametrize("template", ["{{ q + 1 }}", "{{ 1 / 0 }}", "{{ q[5] }}"])
def test_expression_errors_are_render_errors_not_crashes(template):
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    with pytest.raises(RenderFailed, match="could not be rendered"):
        render_messages([{"role": "user", "content": template}], schema, {"q": "ab"})


def test_errors_point_at_the_original_message_position():
    messages = [{"role": "user", "content": ""}, {"role": "user", "content": "{{ x"}]
    _, report = check_content(messages=messages, input_schema={"type": "object"})
    assert [e["where"] for e in report.errors] == ["messages[0].content", "messages[1].content"]


def test_a_ref_that_resolves_nowhere_is_refused_with_its_path():
    """check_schema accepts a $ref to a missing $defs entry or to another document; the
    first validation would fail. Both are refused at save time, where they are."""
    messages = [{"role": "user", "content": "Classify {{ q }}"}]
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    output = {
        "type": "object",
        "$defs": {"label": {"enum": ["spam", "ham"]}},
        "properties": {"label": {"$ref": "#/$defs/lable"}, "ok": {"$ref": "#/$defs/label"}},
    }
    _, report = check_content(
        messages=messages, input_schema=schema, output_schema=output, output_format="json"
    )
    assert report.errors == [
        {
            "where": "output_schema.properties.label.$ref",
            "message": "invalid JSON Schema: $ref '#/$defs/lable' points to nothing in the schema",
        }
    ]
    remote = {**schema, "properties": {"q": {"$ref": "https://example.com/q.json"}}}
    _, report = check_content(messages=messages, input_schema=remote)
    assert report.errors[0]["where"] == "input_schema.properties.q.$ref"
    assert "never fetched" in report.errors[0]["message"]
    # refs that resolve, and "$ref" keys inside data keywords, are fine
    fine = {**output, "properties": {"ok": {"$ref": "#/$defs/label", "default": {"$ref": 1}}}}
    _, report = check_content(
        messages=messages, input_schema=schema, output_schema=fine, output_format="json"
    )
    assert report.errors == []
