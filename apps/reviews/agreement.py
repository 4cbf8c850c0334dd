"""Inter-annotator agreement: Krippendorff's alpha (nominal and interval) and percent agreement.

Pure Python, no Django. A *unit* is one reviewed item; its *values* are what each
annotator gave for one score (missing values are left out). Only units with at least
two values are pairable and count.

Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": with the
coincidence matrix o_ck (each ordered pair of values within a unit adds 1/(m_u − 1)),
n_c = Σ_k o_ck and n = Σ_c n_c,

    alpha = 1 − (n − 1) · Σ_ck o_ck δ²(c, k) / Σ_ck n_c n_k δ²(c, k)

with δ² = [c ≠ k] for nominal data and (c − k)² for interval data. Both sums reduce
to per-unit terms, so `Accumulator` keeps them as JSON-serialisable running sums
that a service updates per item (`remove_unit(old)`, `add_unit(new)`) instead of
recomputing the queue. Per-unit terms are grouped by m_u, so the nominal and
percent-agreement sums stay exact integers.

alpha is None when it is undefined: fewer than two pairable values, or no variation
at all (every value the same, expected disagreement 0).
"""

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

Level = Literal["nominal", "interval"]


def value_key(value: Any) -> str:
    """A JSON object key for a value: booleans as true/false, whole floats as integers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pairable(values: Iterable[Any]) -> list[Any]:
    return [v for v in values if v is not None]


def _delta2(a: Any, b: Any, level: Level) -> float:
    if level == "interval":
        return float(a - b) ** 2
    return 0.0 if value_key(a) == value_key(b) else 1.0


# --- from scratch ---------------------------------------------------------------------


def alpha(table: Mapping[Any, Sequence[Any]], level: Level = "nominal") -> float | None:
    """Krippendorff's alpha over {unit: [values]} (None marks a missing value), built
    from the coincidence matrix pair by pair."""
    coincidences: Counter[tuple[str, str]] = Counter()
    values_of: dict[str, Any] = {}
    for raw in table.values():
        values = _pairable(raw)
        m = len(values)
        if m < 2:
            continue
        for i, a in enumerate(values):
            values_of[value_key(a)] = a
            for j, b in enumerate(values):
                if i != j:
                    coincidences[value_key(a), value_key(b)] += 1 / (m - 1)
    n_c: Counter[str] = Counter()
    for (c, _k), o in coincidences.items():
        n_c[c] += o
    n = sum(n_c.values())
    if n < 2:
        return None
    observed = sum(
        o * _delta2(values_of[c], values_of[k], level) for (c, k), o in coincidences.items()
    )
    expected = sum(
        n_c[c] * n_c[k] * _delta2(values_of[c], values_of[k], level) for c in n_c for k in n_c
    )
    if expected == 0:
        return None
    return 1 - (n - 1) * observed / expected


def percent_agreement(table: Mapping[Any, Sequence[Any]]) -> float | None:
    """Mean over pairable units of the share of value pairs that agree exactly."""
    shares = []
    for raw in table.values():
        values = [value_key(v) for v in _pairable(raw)]
        m = len(values)
        if m < 2:
            continue
        agreeing = sum(1 for i in range(m) for j in range(i + 1, m) if values[i] == values[j])
        shares.append(agreeing / (m * (m - 1) / 2))
    return sum(shares) / len(shares) if shares else None


# --- incremental ------------------------------------------------------------------------


class Accumulator:
    """Running sums for one score over many units; `state` is a plain dict (stored in
    `ReviewQueue.stats`) and is updated in place.

    nominal:  n[value] = pairable values counted per value;
              do[m] = Σ over units with m values of (m² − Σ_c m_c²)   (integers)
    interval: n, sum, sumsq over pairable values;
              do[m] = Σ over units with m values of 2(m Σv² − (Σv)²)
    both:     units[m] = units with m values; agree[m] = Σ agreeing value pairs
    """

    def __init__(self, level: Level, state: dict[str, Any] | None = None) -> None:
        if level not in ("nominal", "interval"):
            raise ValueError(f"unknown level {level!r}")
        self.level = level
        self.state = state if state is not None else self.empty(level)

    @staticmethod
    def empty(level: Level) -> dict[str, Any]:
        if level == "interval":
            return {"n": 0, "sum": 0, "sumsq": 0, "units": {}, "do": {}, "agree": {}}
        return {"n": {}, "units": {}, "do": {}, "agree": {}}

    def add_unit(self, values: Iterable[Any]) -> None:
        self._apply(_pairable(values), +1)

    def remove_unit(self, values: Iterable[Any]) -> None:
        """Take back a unit previously added with exactly these values."""
        self._apply(_pairable(values), -1)

    def _apply(self, values: list[Any], sign: int) -> None:
        m = len(values)
        if m < 2:
            return
        s = self.state
        key = str(m)
        counts = Counter(value_key(v) for v in values)
        agreeing = sum(c * (c - 1) // 2 for c in counts.values())
        if self.level == "nominal":
            within = m * m - sum(c * c for c in counts.values())
            for value, count in counts.items():
                _bump(s["n"], value, sign * count)
        else:
            total = sum(values)
            squares = sum(v * v for v in values)
            within = 2 * (m * squares - total * total)
            s["n"] += sign * m
            s["sum"] += sign * total
            s["sumsq"] += sign * squares
            if s["n"] == 0:  # no float residue once the last unit is gone
                s["sum"] = s["sumsq"] = 0
        _bump(s["units"], key, sign)
        if key in s["units"]:
            s["do"][key] = s["do"].get(key, 0) + sign * within
            s["agree"][key] = s["agree"].get(key, 0) + sign * agreeing
        else:
            s["do"].pop(key, None)
            s["agree"].pop(key, None)

    @property
    def units(self) -> int:
        return sum(self.state["units"].values())

    def alpha(self) -> float | None:
        s = self.state
        observed = sum(do / (int(m) - 1) for m, do in s["do"].items())
        if self.level == "nominal":
            n = sum(s["n"].values())
            expected = n * n - sum(c * c for c in s["n"].values())
        else:
            n = s["n"]
            expected = 2 * (n * s["sumsq"] - s["sum"] * s["sum"])
            # All values equal: zero in exact arithmetic, rounding noise in floats.
            if expected <= 1e-12 * n * s["sumsq"]:
                expected = 0
        if n < 2 or expected <= 0:
            return None
        return 1 - (n - 1) * observed / expected

    def percent(self) -> float | None:
        s = self.state
        units = self.units
        if not units:
            return None
        shares = sum(agree / (int(m) * (int(m) - 1) / 2) for m, agree in s["agree"].items())
        return shares / units


def _bump(counter: dict[str, int], key: str, by: int) -> None:
    """Add `by` to counter[key], dropping the key at zero so equal states compare equal."""
    value = counter.get(key, 0) + by
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)
