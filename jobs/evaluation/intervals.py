"""95% intervals for rates, and paired differences between methods, by bootstrap.

A rate is the mean of a ``(seeds, records)`` matrix of per-record outcomes (``passed`` is 0/1 for
greedy answers, a fraction with several samples; NaN where a record's outcome is undecided, e.g.
api_ok). Its interval resamples records and, where a method ran with several seeds, seeds too, so
the interval covers both the benchmark's sampling and the method's own randomness. A difference between two methods is *paired*: both are resampled on the same
record draw, which is what makes a few points' difference on a few hundred records detectable at all.

Percentile bootstrap, a fixed generator seed: the same run files always give the same report.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def _matrix(outcomes) -> np.ndarray:
    m = np.asarray(outcomes, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(f"outcomes: expected (seeds, records), got shape {m.shape}")
    return m


def _seed_means(m: np.ndarray, record_draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap mean per draw: records from ``record_draws``, seeds resampled when there are several."""
    with warnings.catch_warnings():  # a draw of only undecided (NaN) records has no mean: it is left out
        warnings.simplefilter("ignore", RuntimeWarning)
        per_seed = np.nanmean(m[:, record_draws], axis=2)  # (seeds, draws)
    if m.shape[0] == 1:
        return per_seed[0]
    picks = rng.integers(0, m.shape[0], size=(record_draws.shape[0], m.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_seed[picks, np.arange(record_draws.shape[0])[:, None]], axis=1)


def _interval(value: float, draws: np.ndarray) -> Estimate:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return Estimate(float(value), float(low), float(high))


def rate(outcomes, resamples: int = RESAMPLES, seed: int = 0) -> Estimate | None:
    """The mean outcome with its interval; None where there are no records."""
    m = _matrix(outcomes)
    if m.size == 0 or np.isnan(m).all():
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, m.shape[1], size=(resamples, m.shape[1]))
    return _interval(float(np.nanmean(m)), _seed_means(m, draws, rng))


def paired_difference(a, b, resamples: int = RESAMPLES, seed: int = 0) -> Estimate | None:
    """``mean(a) - mean(b)`` over the same records (columns aligned), with its interval."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"paired difference over different records: {ma.shape[1]} vs {mb.shape[1]}")
    if ma.size == 0 or mb.size == 0:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, ma.shape[1], size=(resamples, ma.shape[1]))
    diffs = _seed_means(ma, draws, rng) - _seed_means(mb, draws, rng)
    return _interval(float(np.nanmean(ma) - np.nanmean(mb)), diffs)


def direction(diff: Estimate | None) -> str:
    """``better``, ``worse`` or ``no detectable difference``: where the 95% interval lies against zero."""
    if diff is None:
        return "not compared"
    return "better" if diff.low > 0 else "worse" if diff.high < 0 else "no detectable difference"


def verdict(diff: Estimate | None, base: str = "the base model") -> str:
    """The sentence a reader wants: better, worse, or no detectable difference, with the numbers."""
    if diff is None:
        return f"not compared with {base} (not scored on the same records)"
    points = f"{diff.value * 100:+.1f} points, 95% CI {diff.low * 100:+.1f} to {diff.high * 100:+.1f}"
    word = direction(diff)
    return f"{word} {'from' if word.startswith('no ') else 'than'} {base} ({points})"
