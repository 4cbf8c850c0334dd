"""The validation table: each bad upload is refused with the exact lines and reasons,
and nothing is stored (no version row, no file)."""

import json

import pytest

from apps.core.exceptions import ValidationFailed
from apps.finetune.models import DatasetVersion
from apps.finetune.rows import MAX_REPORTED_ERRORS, RowsRefused
from tests.finetune.conftest import chat, jsonl, make_dataset, upload

GOOD = chat()
PC = {"prompt": "2+2?", "completion": "4"}

TABLE = [
    pytest.param(
        "chat",
        "rows.jsonl",
        jsonl(GOOD, '{"messages": [', GOOD, "[1, 2]"),
        [
            (2, "not valid JSON: Expecting value at column 15"),
            (4, "expected a JSON object, got list"),
        ],
        id="malformed-json",
    ),
    pytest.param(
        "chat",
        "rows.jsonl",
        jsonl(
            GOOD,
            {"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]},
        ),
        [
            (2, "messages[0] has no role"),
            (2, "messages have no user message"),
        ],
        id="missing-role",
    ),
    pytest.param(
        "chat",
        "rows.jsonl",
        jsonl(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
            {"messages": [{"role": "user", "content": "hi"}]},
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            },
        ),
        [
            (1, "messages[1].role 'bot' is not one of system, user, assistant"),
            (1, "the last message must be the assistant's (the turn trained on)"),
            (2, "the last message must be the assistant's (the turn trained on)"),
            (3, "messages[1] is a system message; only the first message may be"),
        ],
        id="bad-roles",
    ),
    pytest.param(
        "chat",
        "rows.jsonl",
        jsonl(
            GOOD,
            GOOD,
            {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": ""}]},
            {"messages": [], "extra": 1},
        ),
        [
            (3, "messages[0].content is empty"),
            (3, "messages[1].content is empty"),
            (4, "unknown key(s) extra"),
        ],
        id="empty-content-and-unknown-keys",
    ),
    pytest.param(
        "chat",
        "rows.jsonl",
        jsonl(GOOD, chat(answer="x" * 40_000)),
        [(2, "row is 10014 tokens (approx:ceil(chars/4)); the model's context is 8192")],
        id="over-long-row",
    ),
    pytest.param(
        "chat",
        "rows.jsonl",
        jsonl(GOOD, GOOD, PC, GOOD),
        [
            (
                3,
                "mixed formats: this row is prompt/completion, line 1 is chat; "
                "the dataset holds chat rows",
            )
        ],
        id="mixed-formats",
    ),
    pytest.param(
        "prompt_completion",
        "rows.csv",
        b'prompt,completion\n"a, b",c\n"multi\nline",ok\n"bad"quote,x\nnever,read\n',
        [(5, "CSV quoting error: ',' expected after '\"'; the rest of the file was not read")],
        id="csv-quoting",
    ),
    pytest.param(
        "prompt_completion",
        "rows.csv",
        b"prompt,answer\nq,a\n",
        [
            (
                1,
                "header: missing column(s) completion; unknown column(s) answer "
                "(expected prompt,completion)",
            )
        ],
        id="csv-missing-header-column",
    ),
    pytest.param(
        "prompt_completion",
        "rows.csv",
        b"prompt,completion\nq,a\nq,\nonly-one\nx,y,z\n",
        [
            (3, "completion is empty"),
            (4, "1 values for 2 header columns"),
            (5, "3 values for 2 header columns"),
        ],
        id="csv-empty-and-ragged",
    ),
    pytest.param(
        "prompt_completion",
        "rows.jsonl",
        jsonl(PC, {"prompt": "q"}, {"prompt": 3, "completion": "a"}),
        [(2, "missing required field completion"), (3, "prompt must be a string")],
        id="prompt-completion-fields",
    ),
]


DEEP = "[" * 5000 + "]" * 5000
TABLE += [
    pytest.param(
        "chat",
        "rows.jsonl",
        jsonl(GOOD, DEEP, GOOD),
        [(2, "nested more than 64 levels deep")],
        id="nested-5000-deep",
    ),
    pytest.param(
        "chat",
        "rows.jsonl",
        # json.loads raises a plain ValueError past 4,300 digits: this was a 500.
        jsonl(GOOD, json.dumps(GOOD)[:-1] + ', "x": ' + "9" * 5000 + "}"),
        [(2, "not usable JSON: a number has more than 4,300 digits (at column 169)")],
        id="number-past-4300-digits",
    ),
    pytest.param(
        "chat",
        "rows.jsonl",
        jsonl(GOOD, {"messages": [{"role": "user", "content": "a\u0000b"}]}),
        [(2, "contains a NUL character (\\u0000) in messages[0].content")],
        id="nul-character",
    ),
    pytest.param(
        "prompt_completion",
        "rows.csv",
        f"prompt,completion\nq,a\nq,{'x' * 131_073}\n".encode(),
        [
            (
                3,
                "CSV quoting error: field larger than field limit (131072); the rest of the file "
                "was not read",
            )
        ],
        id="csv-cell-past-the-csv-limit",
    ),
]


@pytest.mark.parametrize(("fmt", "filename", "content", "expected"), TABLE)
def test_upload_refused_with_exact_lines(squad, tmp_path, fmt, filename, content, expected):
    dataset = make_dataset(squad, format=fmt)
    with pytest.raises(RowsRefused) as caught:
        upload(dataset, content, filename)
    assert [(e["line"], e["message"]) for e in caught.value.extra] == expected
    assert caught.value.status_code == 422
    assert "nothing was stored" in caught.value.message
    assert not DatasetVersion.objects.exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    dataset.refresh_from_db()
    assert dataset.latest_version is None


@pytest.mark.parametrize(
    ("fmt", "filename", "content", "message"),
    [
        ("chat", "rows.jsonl", b"\n  \n", "'rows.jsonl' is empty: no rows to store."),
        ("chat", "rows.csv", b"messages\n[]\n", "Chat rows cannot be uploaded as CSV"),
        ("chat", "rows.txt", b"{}", "'rows.txt': upload a .jsonl or .csv file."),
        ("chat", "rows.jsonl", b"\xff\xfe{", "'rows.jsonl' is not UTF-8"),
    ],
)
def test_unreadable_files_refused_outright(squad, fmt, filename, content, message):
    dataset = make_dataset(squad, format=fmt)
    with pytest.raises(ValidationFailed) as caught:
        upload(dataset, content, filename)
    assert caught.value.message.startswith(message)
    assert caught.value.field == "file"
    assert not DatasetVersion.objects.exists()


def test_more_than_100_errors_are_capped_with_a_count(squad):
    dataset = make_dataset(squad)
    content = jsonl(*(["{oops"] * 130))
    with pytest.raises(RowsRefused) as caught:
        upload(dataset, content)
    assert len(caught.value.extra) == MAX_REPORTED_ERRORS
    assert caught.value.extra[-1]["line"] == 100
    assert caught.value.total == 130
    assert caught.value.message.startswith("130 of 130 lines refused — nothing was stored")
    assert "30 more not shown" in caught.value.message
    assert caught.value.as_dict()["error_count"] == 130


def test_variables_rows_follow_the_prompt_versions_schema(squad):
    from tests.factories import UserFactory
    from tests.prompts.factories import make_prompt

    version = make_prompt(squad, UserFactory(username="owner")).latest_version
    dataset = make_dataset(squad, slug="vars", format="variables", prompt_version=version)
    good = {"variables": {"customer": {"name": "Ada"}, "question": "q?"}, "output": "a"}
    content = jsonl(
        good, {"variables": {"customer": {}}, "output": "a"}, {"variables": [], "output": "a"}
    )
    with pytest.raises(RowsRefused) as caught:
        upload(dataset, content)
    assert [(e["line"], e["message"]) for e in caught.value.extra] == [
        (2, "variables $: 'question' is a required property"),
        (2, "variables $.customer: 'name' is a required property"),
        (3, "variables must be an object"),
    ]
    csv_content = (
        b'variables,output\n"{""customer"": {""name"": ""Ada""}, ""question"": ""q""}",a\n'
    )
    version = upload(dataset, csv_content, "rows.csv")
    assert version.row_count == 1
    with open(version.path, encoding="utf-8") as handle:
        stored = json.loads(handle.readline())
    assert stored["variables"] == {"customer": {"name": "Ada"}, "question": "q"}
