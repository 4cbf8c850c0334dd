"""The drift rule, pure: given a version's samples of one metric (each in 0..1, oldest
first), is the recent window significantly worse than the baseline?

- baseline: the version's first `baseline_size` samples (a fixed reference: what the
  version did when it was approved and first used); it must be complete.
- window: the latest `window` samples after the baseline (and, after an earlier alert on
  the same version and metric, after the samples that raised it), at least `min_samples`.
- alert when BOTH
  1. the relative drop (baseline mean − window mean) / baseline mean exceeds `threshold`
     (default 0.15, the 15 % of the product brief), and
  2. the absolute drop exceeds Z × the standard error of the difference of the two means
     (Welch: sqrt(var_b/n_b + var_w/n_w), sample variances), Z = 3 — one-sided at about
     0.13 % per check, because the check runs after every new sample: simulated on 1/0
     samples at p = 0.8 (defaults below), 2 % of 500-sample streams ever alert on noise,
     while a sustained fall to 0.6 (a 25 % drop) alerts once the window is mostly made of
     samples after the fall.

Samples: approval rate — 1/0 per annotated review item of the version (approved: the
adjudicated verdict, else a strict majority of its annotations); feedback score — each
feedback's `value` (thumbs 1/0, normalised score, edit similarity).
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

Z = 3.0


@dataclass(frozen=True)
class DriftRule:
    threshold: float = 0.15
    window: int = 100
    baseline_size: int = 100
    min_samples: int = 50
    enabled: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RULE = DriftRule()


@dataclass(frozen=True)
class Drift:
    """The outcome of one check; `drifted` says whether to raise."""

    drifted: bool
    reason: str
    baseline: float | None = None
    current: float | None = None
    drop: float | None = None
    baseline_samples: int = 0
    window_samples: int = 0


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, var


def detect(baseline: Sequence[float], window: Sequence[float], rule: DriftRule) -> Drift:
    """Compare a complete baseline with a window (see the module docstring)."""
    nb, nw = len(baseline), len(window)
    if nb < rule.baseline_size or nb < rule.min_samples:
        return Drift(False, f"baseline has {nb} of {rule.baseline_size} samples", None, None)
    mean_b, var_b = _mean_var(baseline)
    if nw < rule.min_samples:
        return Drift(
            False,
            f"window has {nw} of at least {rule.min_samples} samples",
            baseline=mean_b,
            baseline_samples=nb,
            window_samples=nw,
        )
    mean_w, var_w = _mean_var(window)
    common = {
        "baseline": mean_b,
        "current": mean_w,
        "baseline_samples": nb,
        "window_samples": nw,
    }
    if mean_b <= 0:
        return Drift(False, "the baseline is 0: nothing can drop", drop=0.0, **common)
    drop = (mean_b - mean_w) / mean_b
    if drop <= rule.threshold:
        return Drift(False, f"drop {drop:.1%} within {rule.threshold:.0%}", drop=drop, **common)
    se = math.sqrt(var_b / nb + var_w / nw)
    if mean_b - mean_w <= Z * se:
        return Drift(
            False,
            f"drop {drop:.1%} not significant (difference {mean_b - mean_w:.3f} ≤ {Z}×{se:.3f})",
            drop=drop,
            **common,
        )
    return Drift(True, f"drop {drop:.1%} over {rule.threshold:.0%}", drop=drop, **common)


def split(samples: Sequence[float], rule: DriftRule) -> tuple[Sequence[float], Sequence[float]]:
    """(baseline, window) of a whole series, oldest first."""
    baseline = samples[: rule.baseline_size]
    after = samples[rule.baseline_size :]
    return baseline, after[-rule.window :] if rule.window else after[:0]


def detect_series(samples: Sequence[float], rule: DriftRule = DEFAULT_RULE) -> Drift:
    """`detect` on a whole series (tests, and callers holding every sample)."""
    baseline, window = split(samples, rule)
    return detect(baseline, window, rule)
