"""95% intervals for rates, and paired differences between methods, that never claim certainty.

A rate is the mean of a ``(seeds, records)`` matrix of per-record outcomes (``passed`` is 0/1 for
greedy answers, a fraction with several samples; NaN where a record's outcome is undecided, e.g.
api_ok: such records are left out, and ``n`` counts the decided ones). A difference between two
methods is *paired*: both sides are taken on the same records (a record undecided on either side drops
out of both), which is what makes a few points' difference on a few hundred records detectable at all.

Which interval where, and why:

- Rates of outcomes in [0, 1] (``bounded=True``, the default): the percentile bootstrap collapses to
  a point at 0/n and n/n (``0.000 [0.00, 0.00]``), so a score interval is used. 0/1 outcomes with one
  seed: the Wilson interval on (successes, n) alone. Otherwise (fractions, several seeds): the hull of
  the bootstrap interval (records and seeds resampled: it carries the method's own randomness) and the
  Wilson interval of the pooled mean with n = decided records (seeds rerun the same records; they add
  no independent ones).
- Paired differences of outcomes in [0, 1]: Newcombe's hybrid score interval for paired proportions
  (Newcombe 1998, Stat Med 17:2635, method 10, with its corrected phi), from the 2x2 counts; for
  fractions, "soft" counts of the per-record means over seeds (a = sum x*y, b = sum x*(1-y),
  c = sum (1-x)*y, d = sum (1-x)*(1-y)). 0/1 with one seed a side: Newcombe alone; otherwise the
  hull with the paired bootstrap. Two all-zero sides no longer read ``[+0.0, +0.0]``.
- Continuous measures (``bounded=False``, e.g. a mean negative log-likelihood per record): the plain
  percentile bootstrap, records and seeds resampled.

``Estimate.detectable``, the interval's half-width, is the smallest difference the run could have
told from zero; ``verdict`` states it where it finds none. A fixed generator seed: the same run files
always give the same report.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
Z = NormalDist().inv_cdf(1 - (1 - LEVEL) / 2)
SCALES = {"points": (100.0, 1)}  # unit: (multiplier, decimals); any other unit prints the raw value, 3 decimals


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int | None = None  # records the estimate rests on (decided ones; for a difference, decided on both sides)

    @property
    def detectable(self) -> float:
        """The smallest difference this interval could tell from zero: its half-width."""
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "detectable": self.detectable}


def _matrix(outcomes) -> np.ndarray:
    m = np.asarray(outcomes, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(f"outcomes: expected (seeds, records), got shape {m.shape}")
    return m


def _check_bounded(m: np.ndarray) -> None:
    finite = m[~np.isnan(m)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError("outcomes outside [0, 1]: pass bounded=False for a continuous measure")


def _binary_single(m: np.ndarray) -> bool:
    """One seed of 0/1 outcomes: a score interval alone is exact enough and needs no bootstrap."""
    finite = m[~np.isnan(m)]
    return m.shape[0] == 1 and bool(np.all((finite == 0) | (finite == 1)))


def _record_means(m: np.ndarray) -> np.ndarray:
    """Each record's mean over seeds; NaN where no seed decided it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(m, axis=0)


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


def _percentiles(draws: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def wilson(p: float, n: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``p`` observed on ``n`` records (Wilson 1927)."""
    if n <= 0:
        return 0.0, 1.0
    shrink = 1 + Z * Z / n
    centre = (p + Z * Z / (2 * n)) / shrink
    half = Z / shrink * math.sqrt(max(p * (1 - p), 0.0) / n + Z * Z / (4 * n * n))
    # min/max with p: at 0/n and n/n rounding would otherwise put p a hair outside its own interval
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def newcombe_paired(a: float, b: float, c: float, d: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) for ``p1 - p2`` of a paired 2x2 table: ``a`` both
    succeed, ``b`` only the first, ``c`` only the second, ``d`` neither. Counts may be fractional."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(p1, n)
    l2, u2 = wilson(p2, n)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c  # phi, corrected: shrunk by n/2 towards zero when positive, 0 when within n/2
    corrected = cross - n / 2 if cross > n / 2 else cross if cross < 0 else 0.0
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    eps = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(-1.0, p1 - p2 - delta), min(1.0, p1 - p2 + eps)


def rate(outcomes, resamples: int = RESAMPLES, seed: int = 0, bounded: bool = True) -> Estimate | None:
    """The mean outcome with its interval; None where there are no decided records. ``bounded``: outcomes
    are rates in [0, 1] (score interval, see the module docstring); False for a continuous measure."""
    m = _matrix(outcomes)
    if m.size == 0 or np.isnan(m).all():
        return None
    if bounded:
        _check_bounded(m)
    n = int((~np.isnan(_record_means(m))).sum())
    value = float(np.nanmean(m))
    if bounded and _binary_single(m):
        return Estimate(value, *wilson(value, n), n=n)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, m.shape[1], size=(resamples, m.shape[1]))
    low, high = _percentiles(_seed_means(m, draws, rng))
    if bounded:
        w_low, w_high = wilson(value, n)
        low, high = min(low, w_low), max(high, w_high)
    return Estimate(value, low, high, n=n)


def paired_difference(a, b, resamples: int = RESAMPLES, seed: int = 0, bounded: bool = True) -> Estimate | None:
    """``mean(a) - mean(b)`` over the same records (columns aligned), with its interval; records undecided on
    either side drop out of both. ``bounded``: Newcombe's score interval (see the module docstring);
    False for a continuous measure (plain paired bootstrap)."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"paired difference over different records: {ma.shape[1]} vs {mb.shape[1]}")
    if ma.size == 0 or mb.size == 0:
        return None
    if bounded:
        _check_bounded(ma), _check_bounded(mb)
    x, y = _record_means(ma), _record_means(mb)
    keep = ~np.isnan(x) & ~np.isnan(y)
    if not keep.any():
        return None
    ma, mb, x, y, n = ma[:, keep], mb[:, keep], x[keep], y[keep], int(keep.sum())
    value = float(np.nanmean(ma) - np.nanmean(mb))
    if bounded:
        score = newcombe_paired(float(x @ y), float(x @ (1 - y)), float((1 - x) @ y), float((1 - x) @ (1 - y)))
        if _binary_single(ma) and _binary_single(mb):
            return Estimate(value, *score, n=n)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    low, high = _percentiles(_seed_means(ma, draws, rng) - _seed_means(mb, draws, rng))
    if bounded:
        low, high = min(low, score[0]), max(high, score[1])
    return Estimate(value, low, high, n=n)


def direction(diff: Estimate | None) -> str:
    """``better``, ``worse`` or ``no detectable difference``: where the 95% interval lies against zero."""
    if diff is None:
        return "not compared"
    return "better" if diff.low > 0 else "worse" if diff.high < 0 else "no detectable difference"


def verdict(diff: Estimate | None, base: str = "the base model", unit: str = "points",
            margin: float | None = None, n: int | None = None) -> str:
    """The sentence a reader wants: better, worse, or no detectable difference, with the numbers. ``unit``:
    ``points`` prints a rate difference x100; any other (``nats``) the raw value, 3 decimals. ``margin`` (raw
    units, e.g. 0.05 for 5 points): a detectable difference is said to lie beyond or within it. ``n``: the
    records compared, where the estimate does not carry them."""
    if diff is None:
        return f"not compared with {base} (not scored on the same records)"
    scale, places = SCALES.get(unit, (1.0, 3))

    def fmt(v: float, sign: str = "+") -> str:
        return f"{v * scale:{sign}.{places}f}"

    numbers = f"{fmt(diff.value)} {unit}, 95% CI {fmt(diff.low)} to {fmt(diff.high)}"
    word = direction(diff)
    if word.startswith("no "):
        records = n if n is not None else diff.n
        on = f"these {records} records" if records is not None else "these records"
        numbers += f"; differences under {fmt(diff.detectable, '')} {unit} undetectable on {on}"
    sentence = f"{word} {'from' if word.startswith('no ') else 'than'} {base} ({numbers})"
    if margin is not None and not word.startswith("no "):
        beyond = diff.low > margin if word == "better" else diff.high < -margin
        sentence += f", {'beyond' if beyond else 'within'} the {fmt(abs(margin), '')}-{unit.rstrip('s')} margin"
    return sentence
