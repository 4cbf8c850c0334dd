import pytest

from apps.core.http import parse_id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", 42),
        (" 7 ", 7),
        ("9007199254740991", 2**53 - 1),
        ("9007199254740992", None),  # past MAX_INT
        ("9" * 18, None),
        ("9" * 19, None),  # past PostgreSQL's bigint
        ("²", None),  # isdigit() says yes, int() says no
        ("-1", None),
        ("1.5", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_id(raw, expected) -> None:
    assert parse_id(raw) == expected


def test_parse_int_bounds_and_names_the_field() -> None:
    from apps.core.exceptions import ValidationFailed
    from apps.core.http import MAX_INT, parse_int

    assert parse_int(" -3 ", field="n", label="N") == -3
    assert parse_int("", field="n", label="N") is None
    assert parse_int(str(MAX_INT), field="n", label="N") == MAX_INT
    for raw, words in (
        ("9223372036854775808", "between"),
        ("-1", "between 0"),
        ("1" * 5000, "whole number"),  # int() would raise past 4,300 digits
        ("x", "whole number"),
    ):
        with pytest.raises(ValidationFailed) as info:
            parse_int(raw, field="n", label="N", minimum=0)
        assert info.value.field == "n" and words in info.value.message
