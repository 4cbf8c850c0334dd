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


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.5", "", [], "203.0.113.5"),
        # Without trusted proxies the header is ignored: any client can write it.
        ("203.0.113.5", "1.2.3.4", [], "203.0.113.5"),
        ("10.0.0.2", "198.51.100.9", ["10.0.0.0/8"], "198.51.100.9"),
        # A client's own claim left of the real one is not believed.
        ("10.0.0.2", "1.2.3.4, 198.51.100.9", ["10.0.0.0/8"], "198.51.100.9"),
        # Two proxies: skip both.
        ("10.0.0.2", "198.51.100.9, 10.0.0.7", ["10.0.0.0/8"], "198.51.100.9"),
        # A request that did not come through a trusted proxy keeps its own address.
        ("203.0.113.5", "198.51.100.9", ["10.0.0.0/8"], "203.0.113.5"),
        ("10.0.0.2", "garbage", ["10.0.0.0/8"], "10.0.0.2"),
        ("10.0.0.2", "", ["10.0.0.0/8"], "10.0.0.2"),
    ],
)
def test_client_ip_believes_only_trusted_proxies(
    rf, settings, remote, forwarded, trusted, expected
) -> None:
    from apps.core.http import client_ip

    settings.STUDIO_TRUSTED_PROXIES = trusted
    request = rf.get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_parse_int_bounds_and_names_the_field() -> None:
    from apps.core.exceptions import ValidationFailed
    from apps.core.http import MAX_INT
    from apps.core.views import parse_int

    assert parse_int(" -3 ", field="n", label="N") == -3
    assert parse_int("", field="n", label="N") is None
    assert parse_int(str(MAX_INT), field="n", label="N") == MAX_INT
    for raw, words in (
        ("9223372036854775808", "between"),
        ("-1", "cannot be negative"),
        ("1" * 5000, "whole number"),  # int() would raise past 4,300 digits
        ("x", "whole number"),
    ):
        with pytest.raises(ValidationFailed) as info:
            parse_int(raw, field="n", label="N", minimum=0)
        assert info.value.field == "n" and words in info.value.message
