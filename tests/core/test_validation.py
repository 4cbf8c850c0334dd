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
    assert info.value.field == "variables" and info.value.extra == {"line": 1, "column": 7}
    for deep in ("[" * 5000 + "]" * 5000, "[" * 65 + "]" * 65):  # a RecursionError; past 64
        with pytest.raises(ValidationFailed, match="nested more than 64 levels"):
            parse_json(deep, field="variables", label="Variables")
