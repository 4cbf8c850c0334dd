import pytest

from apps.core.exceptions import ValidationFailed
from apps.core.validation import clean_slug


@pytest.mark.parametrize(
    ("value", "underscores", "message"),
    [
        ("", True, "Slug must not be empty."),
        ("   ", False, "Slug must not be empty."),
        ("a" * 11, True, "Slug is 11 characters long; the limit is 10."),
        ("Bad", True, "may contain lowercase letters, digits and single '-' or '_'"),
        ("a--b", True, "may contain lowercase letters"),
        ("a_b", False, "may contain only lowercase letters, digits and single hyphens"),
        ("-a", False, "single hyphens"),
    ],
)
def test_refusals_name_the_field_and_the_reason(value, underscores, message) -> None:
    with pytest.raises(ValidationFailed, match=message.replace("(", r"\(")) as refused:
        clean_slug(value, field="slug", limit=10, underscores=underscores)
    assert refused.value.field == "slug"


def test_accepted_slugs_come_back_stripped() -> None:
    assert clean_slug(" support-v2_b ", field="slug", limit=20) == "support-v2_b"
    assert clean_slug("acme-2", field="slug", limit=20, underscores=False) == "acme-2"


def test_parse_json_names_the_field_and_refuses_deep_nesting():
    from apps.core.validation import parse_json

    assert parse_json('{"a": [1]}', field="variables", label="Variables") == {"a": [1]}
    assert parse_json("null", field="v", label="V") is None
    with pytest.raises(ValidationFailed) as info:
        parse_json('{"a": ', field="variables", label="Variables")
    assert info.value.field == "variables" and info.value.extra == {
        "reason": "syntax",
        "line": 1,
        "column": 7,
    }
    for deep in ("[" * 5000 + "]" * 5000, "[" * 65 + "]" * 65):  # a RecursionError; past 64
        with pytest.raises(ValidationFailed, match="nested more than 64 levels"):
            parse_json(deep, field="variables", label="Variables")


def test_parse_json_names_a_number_past_4300_digits_with_its_line_and_column():
    # json.loads raises a plain ValueError here, not JSONDecodeError.
    from apps.core.validation import parse_json

    with pytest.raises(ValidationFailed) as info:
        parse_json('{\n  "n": ' + "9" * 5000 + "}", field="variables", label="Variables")
    assert info.value.field == "variables"
    assert info.value.message == (
        "Variables is not usable JSON: a number has more than 4,300 digits (at line 2, column 8)."
    )
    assert info.value.extra == {"reason": "digits", "line": 2, "column": 8}
    assert parse_json("-" + "9" * 4300, field="n", label="N") == -int("9" * 4300)


def test_parse_json_refuses_bytes_that_are_not_utf8_and_reads_a_row_without_a_label():
    from apps.core.validation import parse_json

    with pytest.raises(ValidationFailed, match=r"^Body is not valid JSON: 'utf-8' codec"):
        parse_json(b'{"a": "\xff"}', field="body", label="Body")
    with pytest.raises(ValidationFailed, match=r"^not valid JSON: .* at column 2\.$"):
        parse_json("{bad", field="")


def test_json_value_turns_every_parse_failure_into_a_row_error():
    from apps.core.uploads import RowError, json_value

    cases = {
        '{"words": ' + "9" * 5000 + "}": "not usable JSON: a number has more than 4,300 "
        "digits (at column 11)",
        "[" * 5000 + "]" * 5000: "nested more than 64 levels deep",
        "{bad": "not valid JSON: Expecting property name enclosed in double quotes at column 2",
    }
    for text, message in cases.items():
        with pytest.raises(RowError) as info:
            json_value(text)
        assert str(info.value) == message
