from collections import Counter

import pytest

from apps.governance import pii
from tests.governance.pii_corpus import NEGATIVE, POSITIVE

MIN_SCORE = 0.95


def _negative(row) -> tuple[str, set[tuple[str, str]]]:
    return (row, set()) if isinstance(row, str) else (row[0], set(row[1]))


def _scores() -> dict[str, tuple[float, float, int, int, int]]:
    """Per type: precision, recall, true positives, false positives, false negatives,
    counted over every sentence of the corpus (a phone number found in the SSN
    negatives is a false positive of `phone`)."""
    samples = [(text, {(kind, value)}) for kind, rows in POSITIVE.items() for text, value in rows]
    samples += [_negative(row) for rows in NEGATIVE.values() for row in rows]
    tp, fp, fn = Counter(), Counter(), Counter()
    for text, expected in samples:
        found = {(m.type, text[m.start : m.end]) for m in pii.detect(text)}
        for kind, _ in found & expected:
            tp[kind] += 1
        for kind, _ in found - expected:
            fp[kind] += 1
        for kind, _ in expected - found:
            fn[kind] += 1
    scores = {}
    for kind in [*pii.TYPES, "all"]:
        t, p, n = (
            (sum(tp.values()), sum(fp.values()), sum(fn.values()))
            if kind == "all"
            else (tp[kind], fp[kind], fn[kind])
        )
        scores[kind] = (t / (t + p) if t + p else 1.0, t / (t + n) if t + n else 1.0, t, p, n)
    return scores


def test_corpus_has_enough_cases_per_type():
    for kind in pii.TYPES:
        assert len(POSITIVE[kind]) >= 15, kind
        assert len(NEGATIVE[kind]) >= 10, kind


def test_precision_and_recall_per_type():
    scores = _scores()
    print()
    for kind, (precision, recall, t, p, n) in scores.items():
        print(f"{kind:7} precision {precision:.3f} recall {recall:.3f}  (tp {t}, fp {p}, fn {n})")
    for kind, (precision, recall, *_) in scores.items():
        assert precision >= MIN_SCORE, f"{kind} precision {precision:.3f}"
        assert recall >= MIN_SCORE, f"{kind} recall {recall:.3f}"


@pytest.mark.parametrize(
    ("kind", "text", "value"), [(k, t, v) for k, rows in POSITIVE.items() for t, v in rows]
)
def test_positive(kind, text, value):
    found = [(m.type, text[m.start : m.end]) for m in pii.detect(text)]
    assert (kind, value) in found


@pytest.mark.parametrize(("kind", "row"), [(k, r) for k, rows in NEGATIVE.items() for r in rows])
def test_negative(kind, row):
    text, others = _negative(row)
    assert {(m.type, text[m.start : m.end]) for m in pii.detect(text)} == others


def test_redaction_is_consistent_within_one_input():
    redactor = pii.Redactor()
    text = "a@example.com wrote to b@example.com and a@example.com again"
    out = redactor.apply(text, pii.detect(text))
    assert out == "[EMAIL_1] wrote to [EMAIL_2] and [EMAIL_1] again"
    second = "cc a@example.com"
    assert redactor.apply(second, pii.detect(second)) == "cc [EMAIL_1]"


def test_numbering_continues_after_placeholders_already_present():
    text = "[EMAIL_1] and c@example.com"
    assert pii.Redactor(text).apply(text, pii.detect(text)) == "[EMAIL_1] and [EMAIL_2]"
