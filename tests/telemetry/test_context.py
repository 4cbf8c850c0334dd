"""X-Studio-Context: what is accepted, what is refused and how the refusal reads."""

import pytest

from apps.telemetry.context import ContextRefused, parse_context

LONG = "v" * 128


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", {}),
        ("use_case=contract_review", {"use_case": "contract_review"}),
        (
            "use_case=contract_review; customer_tier=enterprise",
            {"use_case": "contract_review", "customer_tier": "enterprise"},
        ),
        ("a=1;b=2;", {"a": "1", "b": "2"}),  # a trailing separator is harmless
        ("  note = two words  ", {"note": "two words"}),
        ("expr=a=b", {"expr": "a=b"}),
        (f"k{'x' * 31}={LONG}", {f"k{'x' * 31}": LONG}),
        ("; ".join(f"k{i}=v" for i in range(10)), {f"k{i}": "v" for i in range(10)}),
        ("city=Zürich", {"city": "Zürich"}),
    ],
)
def test_good_headers(header, expected):
    assert parse_context(header) == expected


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("; ".join(f"k{i}=v" for i in range(11)), "has 11 pairs; at most 10"),
        ("Use_case=x", "pair 1 ('Use_case=x'): the key must start with a lowercase letter"),
        ("a=1; 9lives=x", "pair 2 ('9lives=x'): the key must start"),
        ("a=1; bad-key=x", "pair 2 ('bad-key=x'): the key must"),
        (f"k{'x' * 32}=v", "pair 1"),
        ("just_a_word", "pair 1 ('just_a_word'): expected key=value"),
        ("a=", "pair 1 ('a='): the value is empty"),
        ("a=1; a=2", "pair 2 ('a=2'): 'a' is given twice"),
        (f"a={LONG}v", "the value has 129 characters; at most 128"),
        ("a=ok; b=bell\x07here", "pair 2 ('b=bell\x07here'): the value contains a non-printable"),
        ("a=tab\there", "non-printable"),
        ("a=" + "x" * 1023, "is 1025 bytes; at most 1024"),
    ],
)
def test_bad_headers_name_the_pair(header, message):
    with pytest.raises(ContextRefused) as info:
        parse_context(header)
    assert info.value.status_code == 400
    assert info.value.field == "X-Studio-Context"
    assert message in info.value.message


def test_every_bad_pair_is_listed():
    with pytest.raises(ContextRefused) as info:
        parse_context("ok=1; Bad=2; c=")
    assert [p["pair"] for p in info.value.extra] == [2, 3]
