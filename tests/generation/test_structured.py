import pytest

from apps.generation.structured import NotJSON, check_output, extract_json, repair_conversation

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}, "score": {"type": "number"}},
    "required": ["label", "score"],
}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ("Sure! Here it is:\n```\n[1, 2]\n```\nAnything else?", [1, 2]),
        ('The answer is {"a": {"b": 2}} as requested.', {"a": {"b": 2}}),
        ("  42 ", 42),
    ],
)
def test_extract_json_tolerates_fences_and_prose(text, value):
    assert extract_json(text) == value


@pytest.mark.parametrize("text", ["", "no json here", '{"a": 1', "```json\n{oops}\n```"])
def test_extract_json_refuses_non_json(text):
    with pytest.raises(NotJSON, match="not JSON"):
        extract_json(text)


def test_check_output_reports_every_schema_error_with_paths():
    value, errors = check_output('{"label": "eggs"}', SCHEMA)
    assert value == {"label": "eggs"}
    assert sorted(e["path"] for e in errors) == ["$", "$.label"]
    assert check_output('{"label": "ham", "score": 0.2}', SCHEMA) == (
        {"label": "ham", "score": 0.2},
        [],
    )
    assert check_output("nope", SCHEMA)[1][0]["path"] == "$"


def test_repair_conversation_feeds_the_errors_back():
    messages = [{"role": "user", "content": "classify"}]
    repaired = repair_conversation(messages, "eggs", [{"path": "$", "message": "bad"}], SCHEMA)
    assert repaired[:2] == [*messages, {"role": "assistant", "content": "eggs"}]
    assert "- $: bad" in repaired[2]["content"] and '"required"' in repaired[2]["content"]


def test_a_stored_schema_with_a_broken_ref_is_an_output_error_not_a_crash():
    """Versions saved before refs were checked still run: the output fails its contract
    with the reason instead of raising."""
    schema = {"type": "object", "properties": {"label": {"$ref": "#/$defs/missing"}}}
    value, errors = check_output('{"label": "spam"}', schema)
    assert value == {"label": "spam"}
    assert errors == [
        {
            "path": "$",
            "message": "the output schema is unusable: $ref '#/$defs/missing' points to "
            "nothing in the schema",
        }
    ]
