"""Test-case assertions: their shape (`clean_assertions`, every problem named by
`assertions[i].field`) and their verdicts on one output (`evaluate`). Pure: the model
call behind a `judge` assertion is made by the caller (`apps.evals.services`), which
passes each judge's raw answer in."""

import json
import re
from dataclasses import dataclass
from typing import Any

import regex

from apps.core.exceptions import ValidationFailed
from apps.generation import structured

# A test case's pattern runs on the worker: past this, its verdict is a failure that says
# so, and the worker goes on (nested repeats such as (a+)+$ backtrack exponentially).
REGEX_TIMEOUT_SECONDS = 0.5
MAX_ASSERTIONS = 50
MAX_TEXT = 10_000
MAX_RUBRIC = 20_000
TYPES = (
    "schema_valid",
    "contains",
    "not_contains",
    "regex",
    "equals_json",
    "max_latency_ms",
    "max_output_tokens",
    "judge",
)
# type -> {option: (required, kind)}
SHAPES: dict[str, dict[str, tuple[bool, str]]] = {
    "schema_valid": {},
    "contains": {"value": (True, "text"), "case_sensitive": (False, "bool")},
    "not_contains": {"value": (True, "text"), "case_sensitive": (False, "bool")},
    "regex": {"pattern": (True, "text"), "case_sensitive": (False, "bool")},
    "equals_json": {"value": (True, "json")},
    "max_latency_ms": {"value": (True, "positive_int")},
    "max_output_tokens": {"value": (True, "positive_int")},
    "judge": {"rubric": (True, "text"), "target": (True, "text"), "threshold": (True, "unit")},
}
JUDGE_SYSTEM = (
    "You are a strict evaluator. Read the rubric, the input and the answer, then reply "
    "with only a score from 0 to 1 (or 1 to 10), nothing else."
)
# The sign is matched so that "-1" reads as out of range, not as 1.
_NUMBER = re.compile(r"(?<![\w.-])(-?\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?")


def _fail(index: int, name: str, message: str) -> ValidationFailed:
    where = f"assertions[{index}]" + (f".{name}" if name else "")
    return ValidationFailed(f"{where}: {message}", field=where)


def _clean_option(index: int, name: str, kind: str, value: Any) -> Any:
    if kind == "text":
        if not isinstance(value, str) or not value:
            raise _fail(index, name, "must be a non-empty string.")
        limit = MAX_RUBRIC if name == "rubric" else MAX_TEXT
        if len(value) > limit:
            raise _fail(index, name, f"is {len(value)} characters long; the limit is {limit}.")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(index, name, "must be true or false.")
        return value
    if kind == "positive_int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(index, name, f"must be a whole number of at least 1 (got {value!r}).")
        return value
    if kind == "unit":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise _fail(index, name, f"must be a number from 0 to 1 (got {value!r}).")
        return float(value)
    try:  # json: any JSON value; Python's json reads NaN and Infinity, JSON has neither
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise _fail(index, name, "contains NaN or Infinity, which JSON does not allow.") from None
    return value


def clean_assertion(index: int, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(index, "", "must be an object with a 'type'.")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in SHAPES:
        raise _fail(index, "type", f"unknown type {kind!r}; one of: {', '.join(TYPES)}.")
    shape = SHAPES[kind]
    unknown = sorted(set(raw) - set(shape) - {"type"})
    if unknown:
        raise _fail(index, unknown[0], f"is not an option of '{kind}'.")
    clean: dict[str, Any] = {"type": kind}
    for name, (required, option_kind) in shape.items():
        if name not in raw:
            if required:
                raise _fail(index, name, f"is required for '{kind}'.")
            continue
        clean[name] = _clean_option(index, name, option_kind, raw[name])
    if kind == "regex":
        try:
            regex.compile(clean["pattern"])
        # A huge repeat count raises OverflowError, deep nesting RecursionError.
        except (regex.error, OverflowError, RecursionError) as exc:
            raise _fail(index, "pattern", f"is not a valid regular expression ({exc}).") from exc
    return clean


def clean_assertions(raw: Any) -> list[dict[str, Any]]:
    """The assertions as stored; the first problem raises ValidationFailed naming
    `assertions[i].<option>`."""
    if not isinstance(raw, list):
        raise ValidationFailed("assertions must be a list.", field="assertions")
    if len(raw) > MAX_ASSERTIONS:
        raise ValidationFailed(
            f"{len(raw)} assertions; the limit is {MAX_ASSERTIONS}.", field="assertions"
        )
    return [clean_assertion(i, a) for i, a in enumerate(raw)]


def judge_targets(assertions: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(i, a["target"]) for i, a in enumerate(assertions) if a["type"] == "judge"]


def judge_conversation(
    assertion: dict[str, Any], variables: Any, output: str
) -> list[dict[str, str]]:
    """What the judge model is asked: the rubric, the case's input, the answer."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": (
                f"Rubric:\n{assertion['rubric']}\n\n"
                f"Input:\n{json.dumps(variables, ensure_ascii=False, sort_keys=True)}\n\n"
                f"Answer:\n{output}\n\n"
                "Score:"
            ),
        },
    ]


def parse_score(text: str) -> float | None:
    """The first number in the judge's answer as a score in 0..1: `0.8`, `8/10`, `8` (a
    number above 1 and at most 10 is read on a 1..10 scale), `80/100`. None when there is
    no number or it is out of range."""
    match = _NUMBER.search(text or "")
    if match is None:
        return None
    value = float(match.group(1))
    if match.group(2):
        scale = float(match.group(2))
        return value / scale if scale and 0 <= value <= scale else None
    if 0 <= value <= 1:
        return value
    if 1 < value <= 10:
        return value / 10
    return None


@dataclass
class Observed:
    """What one case produced: the output as stored (after governance), and its costs."""

    output_text: str
    latency_ms: int
    output_tokens: int
    output_schema: dict[str, Any] | None
    # assertion index -> the judge's raw answer, or an error message prefixed with "error: "
    judge_answers: dict[int, str]


def _contains(assertion: dict[str, Any], text: str) -> bool:
    needle = assertion["value"]
    if assertion.get("case_sensitive", True):
        return needle in text
    return needle.casefold() in text.casefold()


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's ==, true is not 1 and false is not 0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check(index: int, assertion: dict[str, Any], seen: Observed) -> dict[str, Any]:
    """One assertion's verdict: {"type", "passed", "detail"}."""
    kind, text = assertion["type"], seen.output_text
    if kind == "schema_valid":
        _, errors = structured.check_output(text, seen.output_schema)
        detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
        return _verdict(kind, not errors, detail or "valid against the output schema")
    if kind in ("contains", "not_contains"):
        found = _contains(assertion, text)
        passed = found if kind == "contains" else not found
        return _verdict(kind, passed, f"{assertion['value']!r} {'found' if found else 'not found'}")
    if kind == "regex":
        flags = 0 if assertion.get("case_sensitive", True) else regex.IGNORECASE
        try:
            match = regex.search(assertion["pattern"], text, flags, timeout=REGEX_TIMEOUT_SECONDS)
        except TimeoutError:
            return _verdict(
                kind,
                False,
                f"the pattern took longer than {REGEX_TIMEOUT_SECONDS} s on this output and was "
                "stopped; simplify it (nested repeats such as (a+)+ backtrack exponentially)",
            )
        detail = f"matched {match.group(0)[:200]!r}" if match else "no match"
        return _verdict(kind, match is not None, detail)
    if kind == "equals_json":
        try:
            value = structured.extract_json(text)
        except structured.NotJSON as exc:
            return _verdict(kind, False, str(exc))
        equal = _json_equal(value, assertion["value"])
        shown = json.dumps(value, ensure_ascii=False)[:300]
        return _verdict(kind, equal, "equal" if equal else f"got {shown}")
    if kind == "max_latency_ms":
        passed = seen.latency_ms <= assertion["value"]
        return _verdict(kind, passed, f"{seen.latency_ms} ms (limit {assertion['value']})")
    if kind == "max_output_tokens":
        passed = seen.output_tokens <= assertion["value"]
        return _verdict(kind, passed, f"{seen.output_tokens} tokens (limit {assertion['value']})")
    answer = seen.judge_answers.get(index, "error: the judge was not run")
    if answer.startswith("error: "):
        return _verdict(kind, False, f"judge {assertion['target']}: {answer[7:]}", raw="")
    score = parse_score(answer)
    if score is None:
        detail = f"the judge's answer has no score from 0 to 1: {answer[:500]!r}"
        return _verdict(kind, False, detail, raw=answer)
    passed = score >= assertion["threshold"]
    threshold = assertion["threshold"]
    detail = f"score {score:.2f} (threshold {threshold:.2f}); judge said {answer[:500]!r}"
    return _verdict(kind, passed, detail, raw=answer, score=score)


def _verdict(kind: str, passed: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "passed": passed, "detail": detail, **extra}


def evaluate(assertions: list[dict[str, Any]], seen: Observed) -> list[dict[str, Any]]:
    return [check(i, a, seen) for i, a in enumerate(assertions)]
