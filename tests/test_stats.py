"""Golden cases for the statistics every table rests on (alignbench.stats).

Expected values are worked out by hand (Student-t quantiles from tables) and
cross-checked against scipy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from alignbench.errors import DataError
from alignbench.outcomes import Outcomes
from alignbench.stats import (
    bootstrap_counts,
    bootstrap_interval,
    paired_bootstrap,
    paired_t,
    resample,
    t_interval,
)
from alignbench.tasks.classification import ClassificationTask


def test_t_interval_golden():
    ci = t_interval([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, s = sqrt(5/3) = 1.290994, t(0.975, df=3) = 3.182446 → half = 3.182446 * 1.290994 / 2 = 2.054260
    assert ci.mean == 2.5 and ci.kind == "t" and ci.n == 4
    assert ci.half_width == pytest.approx(2.054260, abs=2e-6)
    lo, hi = sps.t.interval(0.95, 3, loc=2.5, scale=sps.sem([1, 2, 3, 4]))
    assert (ci.low, ci.high) == pytest.approx((lo, hi), abs=1e-12)
    one = t_interval([7.0])
    assert (one.low, one.high, one.kind) == (7.0, 7.0, "none")
    with pytest.raises(DataError):
        t_interval([])


def test_paired_t_golden():
    a, b = [10.0, 12.0, 11.0, 13.0], [9.0, 11.0, 11.0, 11.0]
    c = paired_t(a, b)
    # d = (1, 1, 0, 2): mean 1, s = sqrt(2/3), t = 1 / (s / 2) = 2.449490, df 3 → p = 0.091721
    assert c.diff == 1.0 and c.n == 4 and c.test == "paired t"
    assert c.p == pytest.approx(0.091721, abs=1e-6)
    assert c.p == pytest.approx(sps.ttest_rel(a, b).pvalue, abs=1e-12)
    assert c.high - c.diff == pytest.approx(3.182446 * math.sqrt(2 / 3) / 2, abs=1e-6)
    # identical differences: scipy says NaN, the answer is exact
    assert paired_t([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]).p == 0.0
    assert paired_t([2.0, 3.0, 4.0], [2.0, 3.0, 4.0]).p == 1.0


def test_paired_bootstrap_p_value_golden():
    # 100 resampled differences, 4 of them ≤ 0: p = 2 · (1 + 4) / (100 + 1)
    d = np.concatenate([np.full(96, 0.5), [-0.2, -0.1, 0.0, -0.3]])
    c = paired_bootstrap(1.5, 1.0, d + 3.0, np.full(100, 3.0), n_units=50)
    assert c.diff == 0.5 and c.test == "paired bootstrap" and c.n == 50
    assert c.p == pytest.approx(2 * 5 / 101)
    same = paired_bootstrap(1.0, 1.0, np.ones(10), np.ones(10), n_units=5)
    assert same.p == 1.0 and same.diff == 0.0


def test_bootstrap_interval_is_the_percentile_interval():
    ci = bootstrap_interval(500.0, np.arange(1001, dtype=float), n_units=1001)
    assert (ci.low, ci.high) == pytest.approx((25.0, 975.0)) and (ci.mean, ci.kind) == (500.0, "bootstrap")


def test_bootstrap_counts_are_reproducible_and_resample_every_unit_count():
    a = np.concatenate(list(bootstrap_counts(37, n_boot=600, seed=4)), axis=1)
    b = np.concatenate(list(bootstrap_counts(37, n_boot=600, seed=4)), axis=1)
    c = np.concatenate(list(bootstrap_counts(37, n_boot=600, seed=5)), axis=1)
    assert a.shape == (37, 600) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a.sum(0) == 37).all() and a.min() >= 0
    # each unit is drawn once per resample on average
    assert a.mean() == pytest.approx(1.0, abs=0.02)


def test_bootstrap_of_top1_matches_the_binomial_spread_and_is_reproducible():
    rng = np.random.default_rng(0)
    n = 2000
    label = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.3, label, (label + 1) % 4)  # 30 % right
    out = Outcomes("classification", "query", {"pred": pred, "label": label}, {"image": n}, {"n_classes": 4})
    task = ClassificationTask()
    fn = lambda w: task.resampled_metrics(out, w)  # noqa: E731
    s1, s2 = resample(fn, out.units, n_boot=1000, seed=1), resample(fn, out.units, n_boot=1000, seed=1)
    assert np.array_equal(s1["top1"], s2["top1"])
    p = (pred == label).mean()
    assert s1["top1"].std() == pytest.approx(100 * math.sqrt(p * (1 - p) / n), rel=0.1)
    ci = bootstrap_interval(100 * p, s1["top1"], n)
    assert ci.low < 100 * p < ci.high
