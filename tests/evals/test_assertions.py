"""Each assertion type: a pass, a fail, and a configuration refused on save."""

import pytest

from apps.core.exceptions import ValidationFailed
from apps.evals.assertions import Observed, clean_assertions, evaluate, parse_score

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}},
    "required": ["label"],
}


def seen(text: str, *, latency: int = 100, tokens: int = 10, judge: str | None = None):
    return Observed(
        output_text=text,
        latency_ms=latency,
        output_tokens=tokens,
        output_schema=SCHEMA,
        judge_answers={0: judge} if judge is not None else {},
    )


JUDGE = {"type": "judge", "rubric": "Is it polite?", "target": "fake", "threshold": 0.7}

TABLE = [
    # (assertion, passing observation, failing observation)
    ({"type": "schema_valid"}, seen('{"label": "spam"}'), seen('{"label": "eggs"}')),
    ({"type": "contains", "value": "Tide"}, seen("High Tide"), seen("high tide")),
    (
        {"type": "contains", "value": "Tide", "case_sensitive": False},
        seen("high tide"),
        seen("low water"),
    ),
    ({"type": "not_contains", "value": "sorry"}, seen("Sure."), seen("so sorry")),
    (
        {"type": "not_contains", "value": "sorry", "case_sensitive": False},
        seen("Sure."),
        seen("SORRY"),
    ),
    ({"type": "regex", "pattern": r"^\d{3}-\d{4}$"}, seen("555-1234"), seen("5551234")),
    (
        {"type": "equals_json", "value": {"label": "ham"}},
        seen('```json\n{"label": "ham"}\n```'),
        seen('{"label": "spam"}'),
    ),
    ({"type": "max_latency_ms", "value": 500}, seen("x", latency=500), seen("x", latency=501)),
    ({"type": "max_output_tokens", "value": 10}, seen("x", tokens=10), seen("x", tokens=11)),
    (JUDGE, seen("Thank you!", judge="0.9"), seen("Go away.", judge="3/10")),
]


@pytest.mark.parametrize(("assertion", "good", "bad"), TABLE, ids=lambda v: str(v)[:40])
def test_assertion_passes_and_fails(assertion, good, bad):
    [clean] = clean_assertions([assertion])
    [passed] = evaluate([clean], good)
    [failed] = evaluate([clean], bad)
    assert passed["passed"] is True, passed
    assert failed["passed"] is False, failed
    assert passed["type"] == failed["type"] == assertion["type"]
    assert failed["detail"]


BAD = [
    ({"type": "nope"}, "assertions[0].type", "unknown type"),
    ("contains", "assertions[0]", "must be an object"),
    ({"type": "schema_valid", "strict": True}, "assertions[0].strict", "not an option"),
    ({"type": "contains"}, "assertions[0].value", "required"),
    ({"type": "contains", "value": ""}, "assertions[0].value", "non-empty"),
    (
        {"type": "not_contains", "value": "x", "case_sensitive": "no"},
        "assertions[0].case_sensitive",
        "true or false",
    ),
    ({"type": "regex", "pattern": "(unclosed"}, "assertions[0].pattern", "not a valid regular"),
    # re.compile raises OverflowError / RecursionError for these, not re.error
    (
        {"type": "regex", "pattern": "a{99999999999}"},
        "assertions[0].pattern",
        "not a valid regular",
    ),
    ({"type": "regex", "pattern": "(" * 5000 + ")" * 5000}, "assertions[0].pattern", "not a valid"),
    # an unhashable type must be refused, not looked up in the table of types
    ({"type": ["contains"]}, "assertions[0].type", "unknown type"),
    ({"type": {"contains": 1}}, "assertions[0].type", "unknown type"),
    ({"type": "equals_json"}, "assertions[0].value", "required"),
    ({"type": "max_latency_ms", "value": 0}, "assertions[0].value", "at least 1"),
    ({"type": "max_output_tokens", "value": 2.5}, "assertions[0].value", "whole number"),
    ({**JUDGE, "threshold": 1.5}, "assertions[0].threshold", "from 0 to 1"),
    ({"type": "judge", "rubric": "r", "threshold": 0.5}, "assertions[0].target", "required"),
]


@pytest.mark.parametrize(("assertion", "field", "message"), BAD, ids=lambda v: str(v)[:40])
def test_bad_configuration_is_refused_naming_the_field(assertion, field, message):
    with pytest.raises(ValidationFailed, match=message) as info:
        clean_assertions([assertion])
    assert info.value.field == field


def test_the_index_of_the_bad_assertion_is_named():
    with pytest.raises(ValidationFailed) as info:
        clean_assertions([{"type": "contains", "value": "a"}, {"type": "regex", "pattern": "["}])
    assert info.value.field == "assertions[1].pattern"
    with pytest.raises(ValidationFailed) as info:
        clean_assertions({"type": "contains"})
    assert info.value.field == "assertions"


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("0.8", 0.8),
        ("Score: 1", 1.0),
        ("7", 0.7),
        ("8/10", 0.8),
        ("80/100 because", 0.8),
        ("0", 0.0),
        ("10", 1.0),
        ("I'd say 0.35.", 0.35),
        ("excellent", None),
        ("42", None),
        ("11/10", None),
        # a negative score is out of range, not its absolute value
        ("-1", None),
        ("Score: -0.5", None),
        ("-3/10", None),
    ],
)
def test_judge_scores_are_normalised(answer, score):
    assert parse_score(answer) == score


def test_judge_detail_keeps_the_raw_answer_and_failures_are_reported():
    [clean] = clean_assertions([JUDGE])
    [ok] = evaluate([clean], seen("hi", judge="Score: 9 - very polite"))
    assert ok["passed"] and ok["score"] == 0.9 and ok["raw"] == "Score: 9 - very polite"
    assert "very polite" in ok["detail"]
    [vague] = evaluate([clean], seen("hi", judge="quite polite"))
    assert not vague["passed"] and "no score" in vague["detail"]
    [broken] = evaluate([clean], seen("hi", judge="error: connection refused"))
    assert not broken["passed"] and "connection refused" in broken["detail"]
    [missing] = evaluate([clean], seen("hi"))
    assert not missing["passed"]


def test_schema_valid_reports_the_schema_errors():
    [clean] = clean_assertions([{"type": "schema_valid"}])
    [result] = evaluate([clean], seen("not json"))
    assert not result["passed"] and "not JSON" in result["detail"]


@pytest.mark.parametrize(
    ("expected", "output", "equal"),
    [
        ({"approved": True}, '{"approved": 1}', False),
        ({"approved": 0}, '{"approved": false}', False),
        ([1, 0], "[true, false]", False),
        (True, "1", False),
        ({"n": 1}, '{"n": 1.0}', True),  # one JSON number
        ({"a": [True, {"b": None}]}, '{"a": [true, {"b": null}]}', True),
    ],
)
def test_equals_json_tells_booleans_from_numbers(expected, output, equal):
    # In Python True == 1 and False == 0; in JSON they are different values.
    [clean] = clean_assertions([{"type": "equals_json", "value": expected}])
    [result] = evaluate([clean], seen(output))
    assert result["passed"] is equal, result


@pytest.mark.parametrize(
    "assertion", [{"type": "schema_valid"}, {"type": "equals_json", "value": []}]
)
def test_a_deeply_nested_output_fails_the_case_not_the_run(assertion):
    # A degenerate model output ("[[[[…") made json.loads raise RecursionError, which
    # failed the whole eval run instead of this one assertion.
    [clean] = clean_assertions([assertion])
    [result] = evaluate([clean], seen("[" * 5000 + "]" * 5000))
    assert result["passed"] is False and "nested more than 64 levels deep" in result["detail"]


@pytest.mark.parametrize(
    "assertion", [{"type": "schema_valid"}, {"type": "equals_json", "value": []}]
)
def test_an_output_with_a_huge_integer_fails_the_case_not_the_run(assertion):
    # json.loads raises a plain ValueError (not JSONDecodeError) past 4,300 digits.
    [clean] = clean_assertions([assertion])
    [result] = evaluate([clean], seen('{"n": ' + "9" * 5000 + "}"))
    assert result["passed"] is False
    assert "a number has more than 4,300 digits" in result["detail"]


def _evaluate_into(queue, assertion, text) -> None:
    queue.put(evaluate([assertion], seen(text)))


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(x+x+)+y", r"(a|aa)+$"])
def test_a_catastrophic_pattern_cannot_hold_the_worker(pattern):
    """ReDoS: nested repeats backtrack exponentially on a near-miss; the verdict comes
    within the timeout (plus the scheduler's slack), failed, saying why. In a child
    process: a search that never ends is stopped there, and the test fails."""
    import multiprocessing

    (assertion,) = clean_assertions([{"type": "regex", "pattern": pattern}])
    text = ("a" if "a" in pattern else "x") * 5000 + "!"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_evaluate_into, args=(queue, assertion, text))
    child.start()
    child.join(15)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"{pattern} held the evaluation for 15 s")
    (verdict,) = queue.get(timeout=5)
    assert verdict["passed"] is False and "took longer than" in verdict["detail"]
