"""Statistics across training seeds: a run's outcome (its final accuracy, its change in response length) is one
number per seed, and a claim ("FIPO ends more accurate than DAPO") is a difference between two methods run
under the same seeds.

* :func:`across_seeds`: the across-seed mean and its Student t interval. It resamples *training runs* (seeds),
  unlike the evaluation intervals of :mod:`fipo.eval.metrics`, which resample problems or samples of one run.
* :func:`paired`: the per-seed differences of two methods (seed s of one against seed s of the other: same
  data order and sampling seeds), their mean, t interval and the two-sided paired t test.
* :func:`verdict`: reproduced / not reproduced / inconclusive, from where the paired interval lies.

With one seed there is no across-seed spread: the interval, the test and the verdict say so (``ONE_SEED``)
instead of printing numbers. The t distribution comes from the regularised incomplete beta function of
:mod:`fipo.eval.metrics` (P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2)), so there is one implementation of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

from fipo.eval.metrics import LEVEL, beta_cdf, beta_quantile

ONE_SEED = "one seed: no across-seed statistics"


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    return float(beta_cdf(df / (df + t * t), df / 2, 0.5))


def t_quantile(probability: float, df: int) -> float:
    """The q with P(T <= q) = ``probability`` (0 < probability < 1) for Student's t with ``df`` degrees of freedom."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if probability == 0.5:
        return 0.0
    tail = 2 * min(probability, 1 - probability)  # P(|T| > |q|)
    x = float(beta_quantile(tail, df / 2, 0.5))
    q = math.sqrt(df * (1 - x) / x)
    return q if probability > 0.5 else -q


@dataclass(frozen=True)
class SeedInterval:
    """The mean of one number per seed and, with two seeds or more, its t interval at ``level``."""

    mean: float
    low: Optional[float]
    high: Optional[float]
    seeds: tuple[int, ...]
    level: float = LEVEL

    @property
    def resamples(self) -> str:
        return "training seeds"

    def describe(self, digits: int = 3) -> str:
        if self.low is None:
            return f"{self.mean:.{digits}f} ({ONE_SEED})"
        return (f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] "
                f"({self.level:.0%} t interval over {len(self.seeds)} seeds)")


def _checked(values: Mapping[int, float], what: str) -> dict[int, float]:
    if not values:
        raise ValueError(f"{what}: no seeds")
    out = {}
    for seed, value in values.items():
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{what}: seed {seed!r} is not a non-negative integer")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{what}: seed {seed} has a non-finite value ({value})")
        out[seed] = value
    return dict(sorted(out.items()))


def _interval(values: dict[int, float], level: float) -> tuple[SeedInterval, Optional[float]]:
    """The interval and the standard error of the mean (None with one seed)."""
    n = len(values)
    mean = math.fsum(values.values()) / n
    if n < 2:
        return SeedInterval(mean, None, None, tuple(values), level), None
    variance = math.fsum((v - mean) ** 2 for v in values.values()) / (n - 1)
    se = math.sqrt(variance / n)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    return SeedInterval(mean, mean - half, mean + half, tuple(values), level), se


def across_seeds(values: Mapping[int, float], level: float = LEVEL, what: str = "values") -> SeedInterval:
    """The across-seed mean of ``values`` ({seed: value}) with its t interval (none for one seed)."""
    return _interval(_checked(values, what), level)[0]


@dataclass(frozen=True)
class PairedComparison:
    """``a`` minus ``b``, seed by seed: the differences, their interval and the paired t test."""

    differences: dict[int, float]
    interval: SeedInterval
    t: Optional[float]
    p_value: Optional[float]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.differences)

    def describe_test(self) -> str:
        if self.p_value is None:
            return ONE_SEED
        return f"paired t test over {len(self.seeds)} seeds: t = {self.t:.2f}, df = {len(self.seeds) - 1}, p = {self.p_value:.3g}"


def paired(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL,
           names: tuple[str, str] = ("a", "b")) -> PairedComparison:
    """``a`` − ``b`` seed by seed. Both must hold the same seeds: an unpaired seed is an error naming it."""
    a, b = _checked(a, names[0]), _checked(b, names[1])
    if set(a) != set(b):
        raise ValueError(f"{names[0]} and {names[1]} ran different seeds: only in {names[0]}: "
                         f"{sorted(set(a) - set(b))}, only in {names[1]}: {sorted(set(b) - set(a))}")
    differences = {seed: a[seed] - b[seed] for seed in a}
    interval, se = _interval(differences, level)
    if se is None:
        return PairedComparison(differences, interval, None, None)
    if se == 0.0:  # every seed gave the same difference
        t = 0.0 if interval.mean == 0.0 else math.copysign(math.inf, interval.mean)
    else:
        t = interval.mean / se
    return PairedComparison(differences, interval, t, t_two_sided_p(t, len(differences) - 1))


def verdict(comparison: PairedComparison, expected_sign: int = 1) -> str:
    """``reproduced`` when the whole interval lies on the side the paper claims (``expected_sign`` +1: a
    positive difference), ``not reproduced`` when it lies wholly on the other side of 0, else ``inconclusive``
    (which includes every one-seed comparison: there is no interval)."""
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign}")
    low, high = comparison.interval.low, comparison.interval.high
    if low is None:
        return "inconclusive"
    low, high = sorted((expected_sign * low, expected_sign * high))
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced"
    return "inconclusive"


def band(values, level: float = LEVEL):
    """Per step, the across-seed mean of a per-step series and its t interval: ``values`` is a frame with one row per
    step and one column per seed (NaN where a seed has no value). Returns a frame indexed by step with columns
    ``mean``, ``low``, ``high`` (NaN where fewer than two seeds have a value: no interval) and ``seeds``."""
    import pandas as pd

    count = values.notna().sum(axis=1)
    mean = values.mean(axis=1, skipna=True)
    sd = values.std(axis=1, ddof=1, skipna=True)
    quantile = pd.Series([t_quantile(0.5 + level / 2, int(k) - 1) if k >= 2 else float("nan") for k in count],
                         index=values.index, dtype=float)
    half = quantile * sd / count.clip(lower=1) ** 0.5
    return pd.DataFrame({"mean": mean, "low": mean - half, "high": mean + half, "seeds": count})
