"""Uncertainty and paired tests for comparison tables (METHODS.md, "Comparing methods fairly").

* Over seeds: mean ± 95% Student-t interval on the per-seed values; two rows
  are compared with a paired t test over the seeds they share (≥ 3).
* One seed: a percentile bootstrap over the test queries (retrieval,
  classification) or images (segmentation), from the outcomes stored in each
  result; two rows are compared with a paired bootstrap, i.e. the SAME
  resamples of the same queries applied to both.

Resamples are drawn as count matrices (n × B: how often each unit is drawn in
each resample; units are rows so that per-class and per-image sums read rows),
from a generator seeded by ``(seed, n)``: the same seed gives the same
interval, and every run evaluated on the same n queries is resampled alike
(which is what makes the bootstrap paired).  Tasks turn counts into metrics
(``Task.resampled_metrics``), so one matrix product replaces B re-evaluations.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from alignbench.errors import DataError

CONFIDENCE = 0.95
ALPHA = 0.05  # "significantly worse" threshold for bold entries
N_BOOT = 1000
BOOT_SEED = 0
_CHUNK = 250  # resamples per count matrix block (bounds memory: 250 × 10k images × 4 B)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval; ``kind`` is ``t``, ``bootstrap`` or ``none``."""

    mean: float
    low: float
    high: float
    n: int  # seeds (t) or units (bootstrap) it rests on
    kind: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


@dataclass(frozen=True)
class Comparison:
    """A paired difference A − B with its interval and two-sided p-value."""

    diff: float
    low: float
    high: float
    p: float
    n: int  # shared seeds (paired t) or units (paired bootstrap)
    test: str  # "paired t" or "paired bootstrap"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± Student-t interval over per-seed values (one value: no interval)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise DataError("no values to summarise")
    m = float(x.mean())
    if x.size == 1:
        return Interval(m, m, m, 1, "none")
    half = t_quantile(int(x.size) - 1, confidence) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(m, m - half, m + half, int(x.size), "t")


def paired_t(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Comparison:
    """Paired t test of A − B over matched seeds (same order in ``a`` and ``b``)."""
    from scipy.special import stdtr  # the t distribution's CDF as a ufunc: ttest_rel's p without its overhead

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise DataError(f"a paired t test needs ≥ 2 matched values, got {a.size} and {b.size}")
    d = a - b
    ci = t_interval(d, confidence)
    if d.std(ddof=1) == 0:  # no spread: scipy returns NaN; the difference is exact
        p = 1.0 if d.mean() == 0 else 0.0
    else:
        t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
        p = float(2.0 * stdtr(d.size - 1, -abs(t)))
    return Comparison(ci.mean, ci.low, ci.high, p, int(d.size), "paired t")


def bootstrap_counts(n: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED):
    """Yield (n, ≤ _CHUNK) float32 blocks: how often each of n units (rows) is drawn in each resample (columns).

    Seeded by ``(seed, n)``: reproducible, and identical for every run scored
    on the same n units (so differences are paired).  Blocks of up to
    ``_CACHE_ELEMENTS`` are kept: a report resamples many runs on one test set.
    """
    if n <= 0:
        raise DataError("cannot bootstrap over zero units")
    if n * n_boot <= _CACHE_ELEMENTS:
        return iter(_cached_counts(int(n), int(n_boot), int(seed)))
    return _draw_counts(n, n_boot, seed)


_CACHE_ELEMENTS = 1 << 24  # 64 MB of float32 per cached (n, n_boot, seed)


@lru_cache(maxsize=6)
def _cached_counts(n: int, n_boot: int, seed: int) -> tuple[np.ndarray, ...]:
    blocks = tuple(_draw_counts(n, n_boot, seed))
    for b in blocks:
        b.flags.writeable = False
    return blocks


def _draw_counts(n: int, n_boot: int, seed: int):
    rng = np.random.default_rng([int(seed), int(n)])
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(b, n), dtype=np.int32)
        counts = np.empty((n, b), dtype=np.float32)
        for j in range(b):  # one bincount per resample: faster than one over offset indices
            counts[:, j] = np.bincount(idx[j], minlength=n)
        yield counts


def resample(
    metric_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    units: dict[str, int],
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> dict[str, np.ndarray]:
    """Each metric under ``n_boot`` resamples: ``metric_fn({unit: counts block})`` → {metric: (b,)}.

    Units with different counts (e.g. image and caption queries) are resampled
    independently, each from its own reproducible stream.
    """
    streams = {u: bootstrap_counts(n, n_boot, seed) for u, n in units.items()}
    parts: dict[str, list[np.ndarray]] = {}
    with warnings.catch_warnings():  # a class absent from a resample gives an all-NaN slice: that is expected
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(0, n_boot, _CHUNK):
            block = {u: next(s) for u, s in streams.items()}
            for k, v in metric_fn(block).items():
                parts.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.nanpercentile(samples, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


def bootstrap_interval(point: float, samples: np.ndarray, n_units: int, confidence: float = CONFIDENCE) -> Interval:
    """Percentile bootstrap interval around the observed ``point``."""
    samples = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(samples).any():
        return Interval(point, point, point, n_units, "none")
    lo, hi = _percentiles(samples, confidence)
    return Interval(float(point), lo, hi, int(n_units), "bootstrap")


def paired_bootstrap(
    point_a: float, point_b: float, samples_a: np.ndarray, samples_b: np.ndarray, n_units: int,
    confidence: float = CONFIDENCE,
) -> Comparison:  # fmt: skip
    """A − B from resamples drawn alike for both; p = two-sided share of resampled differences across 0."""
    d = np.asarray(samples_a, dtype=np.float64) - np.asarray(samples_b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise DataError("no finite resampled differences")
    lo, hi = _percentiles(d, confidence)
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    p = min(1.0, 2.0 * (1 + min(below, above)) / (d.size + 1))
    return Comparison(float(point_a - point_b), lo, hi, p, int(n_units), "paired bootstrap")


@lru_cache(maxsize=64)
def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """Student-t two-sided quantile (cached; scipy.special, as scipy.stats takes seconds to import)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.5 + confidence / 2))
