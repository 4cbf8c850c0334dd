import pytest

from apps.core.http import parse_id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", 42),
        (" 7 ", 7),
        ("9" * 18, int("9" * 18)),
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
