"""Breaking-change classification: one row per kind of schema change."""

import copy

import pytest

from apps.prompts.diff import schema_changes, version_diff
from apps.prompts.models import PromptVersion

BASE_INPUT = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "maxLength": 100},
        "lang": {"type": "string", "enum": ["en", "fr"]},
        "count": {"type": "number"},
        "opts": {"type": "object", "properties": {"deep": {"type": "boolean"}}},
    },
    "required": ["text"],
}
BASE_OUTPUT = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label", "score"],
}


def version(input_schema=None, output_schema=BASE_OUTPUT, output_format="json", **kw):
    return PromptVersion(
        number=kw.get("number", 1),
        messages=kw.get("messages", [{"role": "user", "content": "{{ text }}"}]),
        input_schema=input_schema or BASE_INPUT,
        output_schema=output_schema,
        output_format=output_format,
        model_settings=kw.get("model", {"target": "local", "temperature": 0.7}),
        fallback_target="",
    )


def mutate(schema, fn):
    copied = copy.deepcopy(schema)
    fn(copied)
    return copied


def _add_required(s):
    s["properties"]["tone"] = {"type": "string"}
    s["required"].append("tone")


INPUT_CASES = [
    ("required variable added", "$.tone", True, _add_required),
    ("optional variable added", "$.tone", False, lambda s: s["properties"].update(tone={})),
    ("variable removed", "$.lang", True, lambda s: s["properties"].pop("lang")),
    ("became required", "$.lang", True, lambda s: s["required"].append("lang")),
    ("became optional", "$.text", False, lambda s: s["required"].clear()),
    ("type narrowed", "$.count", True, lambda s: s["properties"]["count"].update(type="integer")),
    (
        "type widened",
        "$.text",
        False,
        lambda s: s["properties"]["text"].update(type=["string", "null"]),
    ),
    ("type changed", "$.text", True, lambda s: s["properties"]["text"].update(type="boolean")),
    ("enum narrowed", "$.lang", True, lambda s: s["properties"]["lang"].update(enum=["en"])),
    (
        "enum widened",
        "$.lang",
        False,
        lambda s: s["properties"]["lang"].update(enum=["en", "fr", "de"]),
    ),
    ("maxLength tightened", "$.text", True, lambda s: s["properties"]["text"].update(maxLength=50)),
    ("maxLength relaxed", "$.text", False, lambda s: s["properties"]["text"].update(maxLength=500)),
    ("minimum tightened", "$.count", True, lambda s: s["properties"]["count"].update(minimum=0)),
    (
        "variable removed",
        "$.opts.deep",
        True,
        lambda s: s["properties"]["opts"]["properties"].pop("deep"),
    ),
    ("extra variables refused", "$", True, lambda s: s.update(additionalProperties=False)),
]

OUTPUT_CASES = [
    ("property removed", "$.score", True, lambda s: s["properties"].pop("score")),
    ("no longer guaranteed", "$.score", True, lambda s: s["required"].remove("score")),
    ("property added", "$.reason", False, lambda s: s["properties"].update(reason={})),
    (
        "type widened",
        "$.label",
        True,
        lambda s: s["properties"]["label"].update(type=["string", "null"]),
    ),
    (
        "type narrowed",
        "$.score",
        False,
        lambda s: s["properties"]["score"].update(type="integer"),
    ),
    (
        "enum widened",
        "$.label",
        True,
        lambda s: s["properties"]["label"].update(enum=["a", "b", "c"]),
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "breaking", "fn"), INPUT_CASES, ids=[f"{c[0]}-{c[1]}" for c in INPUT_CASES]
)
def test_input_schema_changes(change, path, breaking, fn):
    changes = schema_changes(version(), version(input_schema=mutate(BASE_INPUT, fn)))
    assert [(c.side, c.change, c.path, c.breaking) for c in changes] == [
        ("input", change, path, breaking)
    ]


@pytest.mark.parametrize(
    ("change", "path", "breaking", "fn"), OUTPUT_CASES, ids=[f"{c[0]}-{c[1]}" for c in OUTPUT_CASES]
)
def test_output_schema_changes(change, path, breaking, fn):
    if change == "enum widened":  # widening needs an enum to start from
        old = version(
            output_schema=mutate(
                BASE_OUTPUT, lambda s: s["properties"]["label"].update(enum=["a", "b"])
            )
        )
    else:
        old = version()
    changes = schema_changes(old, version(output_schema=mutate(BASE_OUTPUT, fn)))
    assert [(c.side, c.change, c.path, c.breaking) for c in changes] == [
        ("output", change, path, breaking)
    ]


def test_output_format_and_schema_presence():
    as_text = version(output_schema=None, output_format="text")
    dropped = schema_changes(version(), as_text)
    assert {(c.change, c.breaking) for c in dropped} == {
        ("structured output dropped", True),
        ("output schema removed", True),
    }
    added = schema_changes(as_text, version())
    assert {(c.change, c.breaking) for c in added} == {
        ("structured output added", False),
        ("output schema added", False),
    }


def test_identical_schemas_have_no_changes():
    assert schema_changes(version(), version()) == []


def test_version_diff_side_by_side_and_config():
    old = version(messages=[{"role": "user", "content": "a\nb\nc"}], model={"temperature": 0.7})
    new = version(
        number=2,
        messages=[{"role": "user", "content": "a\nB\nc\nd"}, {"role": "system", "content": "s"}],
        model={"temperature": 0.2},
    )
    diff = version_diff(old, new)
    rows = diff["messages"][0]["rows"]
    assert [r["kind"] for r in rows] == ["equal", "changed", "equal", "added"]
    assert rows[1]["left"] == "b" and rows[1]["right"] == "B"
    assert diff["messages"][1]["old_role"] is None and diff["messages"][1]["changed"]
    assert diff["config"] == [{"key": "model.temperature", "old": 0.7, "new": 0.2}]
    assert diff["breaking"] is False
