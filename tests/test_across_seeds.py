"""Across-seed statistics (fipo.analysis.across_seeds) against float64 references and closed forms."""

import math
import random
import statistics

import pytest

from fipo.analysis.across_seeds import (ONE_SEED, across_seeds, paired, t_quantile, t_two_sided_p, verdict)

# Student t quantiles from tables (two-sided 95 %: the 0.975 quantile), 6 significant digits
T975 = {1: 12.7062, 2: 4.30265, 3: 3.18245, 4: 2.77645, 9: 2.26216, 29: 2.04523}


def _cauchy_p(t):  # df = 1: P(|T| > t) = 1 - 2 atan(t) / pi
    return 1 - 2 * math.atan(abs(t)) / math.pi


def _df2_p(t):  # df = 2: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_two_sided_p_matches_the_closed_forms_on_fresh_inputs():
    rng = random.Random()
    for _ in range(200):
        t = rng.choice([-1, 1]) * 10 ** rng.uniform(-4, 3)
        assert t_two_sided_p(t, 1) == pytest.approx(_cauchy_p(t), rel=1e-9, abs=1e-14)
        assert t_two_sided_p(t, 2) == pytest.approx(_df2_p(t), rel=1e-9, abs=1e-14)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0) and t_two_sided_p(math.inf, 3) == 0.0


def test_quantiles_match_the_tables_and_invert_the_cdf():
    for df, q in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(q, rel=1e-5)
        assert t_quantile(0.025, df) == pytest.approx(-q, rel=1e-5)
    rng = random.Random()
    for _ in range(50):
        df, p = rng.randint(1, 60), rng.uniform(0.001, 0.999)
        q = t_quantile(p, df)
        one_sided = t_two_sided_p(q, df) / 2
        assert (1 - one_sided if q > 0 else one_sided) == pytest.approx(p, abs=1e-9)
    assert t_quantile(0.5, 7) == 0.0
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="probability"):
            t_quantile(bad, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.9, 0)


def test_interval_against_a_float64_reference():
    rng = random.Random()
    for n in (2, 3, 5, 12):
        values = {seed: rng.gauss(0.5, 0.2) for seed in rng.sample(range(1000), n)}
        got = across_seeds(values)
        mean = statistics.fmean(values.values())
        half = T975.get(n - 1, t_quantile(0.975, n - 1)) * statistics.stdev(values.values()) / math.sqrt(n)
        assert got.mean == pytest.approx(mean, rel=1e-12)
        # the half-width, not the bounds (a bound near 0 has no relative precision); tables carry 6 digits
        assert (got.high - got.low) / 2 == pytest.approx(half, rel=1e-5)
        assert (got.low + got.high) / 2 == pytest.approx(mean, rel=1e-12, abs=1e-12)
        assert got.seeds == tuple(sorted(values)) and got.resamples == "training seeds"
        assert f"over {n} seeds" in got.describe()


def test_one_seed_has_no_interval_and_says_so():
    got = across_seeds({3: 0.4})
    assert (got.mean, got.low, got.high) == (0.4, None, None)
    assert ONE_SEED in got.describe() and "[" not in got.describe()
    comparison = paired({3: 0.5}, {3: 0.4})
    assert comparison.p_value is None and comparison.describe_test() == ONE_SEED
    assert verdict(comparison) == "inconclusive"


def test_paired_test_against_a_float64_reference():
    rng = random.Random()
    seeds = rng.sample(range(100), 4)
    a = {s: rng.gauss(0.6, 0.1) for s in seeds}
    b = {s: a[s] - rng.gauss(0.05, 0.05) for s in seeds}
    got = paired(a, b, names=("fipo", "dapo"))
    d = [a[s] - b[s] for s in sorted(seeds)]
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
    assert list(got.differences.values()) == pytest.approx(d, rel=1e-12)
    assert got.t == pytest.approx(t, rel=1e-10)
    assert got.p_value == pytest.approx(t_two_sided_p(t, 3), rel=1e-12)
    assert "df = 3" in got.describe_test()


def test_paired_edge_cases():
    same = paired({1: 0.5, 2: 0.7}, {1: 0.4, 2: 0.6})  # the same difference at every seed
    assert same.t == math.inf and same.p_value == 0.0 and same.interval.low == pytest.approx(0.1)
    assert verdict(same) == "reproduced" and verdict(same, expected_sign=-1) == "not reproduced"
    zero = paired({1: 0.5, 2: 0.7}, {1: 0.5, 2: 0.7})
    assert zero.t == 0.0 and zero.p_value == pytest.approx(1.0) and verdict(zero) == "inconclusive"
    with pytest.raises(ValueError, match=r"fipo and dapo ran different seeds: only in fipo: \[3\], only in dapo: \[2\]"):
        paired({1: 0.1, 3: 0.2}, {1: 0.1, 2: 0.2}, names=("fipo", "dapo"))
    with pytest.raises(ValueError, match="fipo: seed 2 has a non-finite value"):
        paired({1: 0.1, 2: float("nan")}, {1: 0.1, 2: 0.2}, names=("fipo", "dapo"))
    with pytest.raises(ValueError, match="not a non-negative integer"):
        across_seeds({-1: 0.3})
    with pytest.raises(ValueError, match="no seeds"):
        across_seeds({})
    with pytest.raises(ValueError, match="expected_sign"):
        verdict(same, expected_sign=0)


def test_verdict_follows_the_interval():
    up = paired({1: 1.0, 2: 1.2, 3: 1.1}, {1: 0.0, 2: 0.1, 3: 0.05})
    straddles = paired({1: 1.0, 2: -1.0, 3: 0.1}, {1: 0.0, 2: 0.0, 3: 0.0})
    assert verdict(up) == "reproduced" and verdict(up, -1) == "not reproduced"
    assert verdict(straddles) == verdict(straddles, -1) == "inconclusive"
