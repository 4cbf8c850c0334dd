import json
import random

import pytest

from apps.reviews.agreement import Accumulator, alpha, percent_agreement

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four
# observers, twelve units, missing values (None). Published: nominal 0.743, interval 0.849.
_ = None
OBSERVERS = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    "C": [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
}
KRIPPENDORFF_2011 = {u: [values[u] for values in OBSERVERS.values()] for u in range(12)}


def _accumulated(table: dict, level: str) -> Accumulator:
    accumulator = Accumulator(level)
    for values in table.values():
        accumulator.add_unit(values)
    return accumulator


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("interval", 0.849)])
def test_krippendorff_2011_reliability_data(level, expected):
    assert round(alpha(KRIPPENDORFF_2011, level), 3) == expected
    accumulator = _accumulated(KRIPPENDORFF_2011, level)
    assert round(accumulator.alpha(), 3) == expected
    # Unit 12 has a single value: not pairable.
    assert accumulator.units == 11


def test_percent_agreement_of_the_2011_data():
    # Agreeing pairs over all pairs, unit by unit: units 1, 3, 4, 5, 7, 9, 10 agree fully;
    # unit 2: 3 of 6, unit 6: 0 of 6, unit 8: 3 of 6, unit 11: 1 of 1.
    expected = (7 * 1 + 0.5 + 0 + 0.5 + 1) / 11
    assert percent_agreement(KRIPPENDORFF_2011) == pytest.approx(expected)
    assert _accumulated(KRIPPENDORFF_2011, "nominal").percent() == pytest.approx(expected)


def test_perfect_agreement_is_one():
    table = {"u1": [1, 1, 1], "u2": [3, 3], "u3": [5, 5, None]}
    for level in ("nominal", "interval"):
        assert alpha(table, level) == 1.0
        assert _accumulated(table, level).alpha() == 1.0
    assert percent_agreement(table) == 1.0


def test_two_by_two_by_hand():
    # Nominal, coders A and B, units u1 = (a, a), u2 = (a, b).
    # Coincidences: o_aa = 2 (u1's two ordered pairs, each 1/(2-1)), o_ab = o_ba = 1.
    # n_a = 3, n_b = 1, n = 4. Observed Σ o_ck δ = o_ab + o_ba = 2.
    # Expected Σ n_c n_k δ = 2 · n_a · n_b = 6. alpha = 1 - (4-1) · 2/6 = 0.
    nominal = {"u1": ["a", "a"], "u2": ["a", "b"]}
    assert alpha(nominal, "nominal") == 0.0
    assert _accumulated(nominal, "nominal").alpha() == 0.0
    assert percent_agreement(nominal) == 0.5
    # Interval, u1 = (1, 2), u2 = (5, 5). Observed: u1's pairs (1,2) and (2,1), δ² = 1 → 2.
    # n_1 = n_2 = 1, n_5 = 2. Expected: 2·(1·1·1) + 2·(1·2·16) + 2·(1·2·9) = 102.
    # alpha = 1 - 3 · 2/102 = 16/17.
    interval = {"u1": [1, 2], "u2": [5, 5]}
    assert alpha(interval, "interval") == pytest.approx(16 / 17)
    assert _accumulated(interval, "interval").alpha() == pytest.approx(16 / 17)


def test_undefined_cases_are_none():
    for table in ({}, {"u": [1]}, {"u": [1, None, None]}, {"u1": [2, 2], "u2": [2, 2, 2]}):
        for level in ("nominal", "interval"):
            assert alpha(table, level) is None
            assert _accumulated(table, level).alpha() is None
    assert percent_agreement({"u": [1]}) is None
    assert Accumulator("nominal").percent() is None


def test_booleans_are_nominal_values():
    table = {"u1": [True, True], "u2": [False, False], "u3": [True, False]}
    assert alpha(table, "nominal") == pytest.approx(1 - 5 * 2 / 18)
    assert _accumulated(table, "nominal").alpha() == pytest.approx(1 - 5 * 2 / 18)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("level", ["nominal", "interval"])
def test_incremental_equals_from_scratch_after_random_changes(level, seed):
    """Units change value sets over time; the service takes back a unit's old values and
    adds its new ones. The stored state goes through JSON at every step, like the
    queue's stats column."""
    rng = random.Random(seed)
    choices = [1, 2, 3, 4, 5, 2.5] if level == "interval" else ["a", "b", "c", True, 3]
    table: dict[int, list] = {}
    state = Accumulator.empty(level)
    for _step in range(200):
        unit = rng.randrange(15)
        accumulator = Accumulator(level, json.loads(json.dumps(state)))
        if unit in table:
            accumulator.remove_unit(table[unit])
        if rng.random() < 0.15:
            table.pop(unit, None)
        else:
            size = rng.randint(0, 5)
            table[unit] = [rng.choice([*choices, None]) for _ in range(size)]
            accumulator.add_unit(table[unit])
        state = accumulator.state
        final = Accumulator(level, state)
        expected_alpha = alpha(table, level)
        if expected_alpha is None:
            assert final.alpha() is None
        else:
            assert final.alpha() == pytest.approx(expected_alpha, abs=1e-9)
        expected_percent = percent_agreement(table)
        if expected_percent is None:
            assert final.percent() is None
        else:
            assert final.percent() == pytest.approx(expected_percent, abs=1e-12)
    # The running state is exactly the state of the final table built from nothing.
    assert state == _accumulated(table, level).state
