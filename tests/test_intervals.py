"""Intervals and paired differences: they cover what they should, and a real difference is detected."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.evaluation.intervals import direction, newcombe_paired, paired_difference, rate, verdict
from orchestrator.plan import plan_jobs, split_job_id
from orchestrator.spec import parse_spec


def test_rate_interval_contains_the_rate_and_narrows_with_more_records():
    rng = np.random.default_rng(1)
    small = rate(rng.random(40) < 0.3)
    large = rate(rng.random(4000) < 0.3)
    assert small.low <= small.value <= small.high
    assert large.low < 0.3 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 5


def test_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    covered = sum(e.low <= 0.4 <= e.high for e in (rate(rng.random(100) < 0.4, resamples=500) for _ in range(200)))
    assert 0.88 <= covered / 200 <= 0.99


def test_seeds_widen_the_interval_when_seeds_disagree():
    one = np.tile((np.arange(50) % 2).astype(float), (3, 1))  # three identical seeds
    agree = rate(one)
    disagree = rate(np.stack([np.ones(50), np.zeros(50), one[0]]))  # same mean, seeds far apart
    assert agree.value == disagree.value == 0.5
    assert disagree.high - disagree.low > 2 * (agree.high - agree.low)


def test_paired_difference_detects_a_small_gain_that_unpaired_intervals_cannot():
    rng = np.random.default_rng(3)
    base = (rng.random(300) < 0.5).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:15]] = 1.0  # +5 points, on the same records
    a, b = rate(better), rate(base)
    assert a.low < b.high  # the two rates' own intervals overlap
    diff = paired_difference(better, base)
    assert abs(diff.value - 0.05) < 1e-9 and diff.low > 0
    assert direction(diff) == "better" and verdict(diff, "`base`").startswith("better than `base` (+5.0 points")
    assert direction(paired_difference(base, better)) == "worse"
    same = paired_difference(base, base)
    assert direction(same) == "no detectable difference" and same.value == 0


def test_undecided_records_are_left_out_not_counted():
    est = rate([1.0, float("nan"), 0.0, float("nan")])
    assert est.value == 0.5
    assert rate([float("nan")]) is None


def test_a_rate_at_zero_or_all_keeps_a_width():
    none, every = rate(np.zeros(12)), rate(np.ones(12))
    assert none.value == 0 and none.low == 0 and none.high > 0.2  # Wilson: 0.243; the bootstrap said [0, 0]
    assert every.value == 1 and every.high == 1 and every.low < 0.8
    assert none.n == 12 and abs(none.detectable - none.high / 2) < 1e-12
    seeded = rate(np.zeros((3, 12)))  # seeds rerun the same 12 records: no narrower than one seed
    assert seeded.high == pytest.approx(none.high)
    assert rate([[0.0, 0.25, 0.0, float("nan")]]).n == 3  # fractional, undecided left out of n


def test_a_paired_difference_of_nothing_is_not_certain():
    same = paired_difference(np.zeros(16), np.zeros(16))
    assert same.low < 0 < same.high and same.high - same.low > 0.2 and same.value == 0
    assert direction(same) == "no detectable difference"
    soft = paired_difference(np.zeros((2, 16)), np.full((3, 16), 0.0))  # several seeds: hull, still wide
    assert soft.high - soft.low > 0.2


def _records(a, b, c, d):
    """Per-record outcomes laid out as the paired 2x2 table (a both, b first only, c second only, d neither)."""
    x = np.array([1] * a + [1] * b + [0] * c + [0] * d, dtype=float)
    y = np.array([1] * a + [0] * b + [1] * c + [0] * d, dtype=float)
    return x, y


@pytest.mark.parametrize("table, published", [
    ((36, 12, 2, 0), (0.0569, 0.3404)),  # Newcombe (1998) Stat Med 17:2635, Table II, example (a), method 10
    ((59, 6, 16, 80), (-0.1186, -0.0046)),  # Fagerland, Lydersen & Laake (2017), ch. 8, Cavo et al. (2012)
])
def test_newcombe_matches_published_examples(table, published):
    assert newcombe_paired(*table) == pytest.approx(published, abs=5e-4)
    est = paired_difference(*_records(*table))  # the same table, from per-record outcomes
    assert (est.low, est.high) == pytest.approx(published, abs=5e-4) and est.n == sum(table)


def test_records_undecided_on_either_side_drop_out_of_both():
    est = paired_difference([1.0, float("nan"), 0.0, 1.0], [1.0, 1.0, float("nan"), 0.0])
    assert est.n == 2 and est.value == 0.5  # records 0 and 3 only
    assert paired_difference([float("nan")] * 3, [1.0] * 3) is None


def test_unbounded_measures_keep_the_plain_bootstrap():
    nll = np.random.default_rng(4).gamma(2.0, 1.5, size=(1, 80))  # a mean NLL per record, far above 1
    with pytest.raises(ValueError, match="bounded=False"):
        rate(nll)
    est = rate(nll, resamples=500, seed=7, bounded=False)
    rng = np.random.default_rng(7)  # the same bootstrap, by hand
    means = nll[0][rng.integers(0, 80, size=(500, 80))].mean(axis=1)
    assert (est.low, est.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    flat = paired_difference(np.full(20, 2.5), np.full(20, 2.5), bounded=False)
    assert flat.low == flat.high == 0  # no score interval for a continuous measure


def test_verdict_states_the_detectable_size_units_and_margin():
    same = paired_difference(np.zeros(16), np.zeros(16))
    assert verdict(same, "X") == ("no detectable difference from X (+0.0 points, 95% CI -19.4 to +19.4; "
                                  "differences under 19.4 points undetectable on these 16 records)")
    assert verdict(same, "X", n=20).endswith("on these 20 records)")
    nats = verdict(paired_difference([1.25, 3.5, 2.0, 0.5], [1.0, 3.0, 2.5, 0.5], bounded=False), "X", unit="nats")
    assert nats.startswith("no detectable difference from X (+0.062 nats, 95% CI ") and " nats undetectable" in nats
    gain = paired_difference(*_records(100, 60, 0, 140))  # +20 points, interval about +15 to +25
    assert verdict(gain, "X").startswith("better than X (+20.0 points, 95% CI +1") and "margin" not in verdict(gain)
    assert verdict(gain, "X", margin=0.05).endswith("), beyond the 5.0-point margin")
    assert verdict(gain, "X", margin=0.18).endswith("), within the 18.0-point margin")
    loss = paired_difference(*_records(100, 0, 60, 140))
    assert direction(loss) == "worse" and verdict(loss, "X", margin=0.05).endswith("beyond the 5.0-point margin")
    assert verdict(None, "X") == "not compared with X (not scored on the same records)"


SEEDED = """\
name: s
seeds: [0, 1, 2]
datasets: [{name: migrations, split: test}, {name: humaneval, limit: 3}]
methods:
  - {name: reference, kind: reference, datasets: [migrations]}
  - {name: greedy, kind: prompt, backend: {kind: hf}}
  - {name: sampled, kind: prompt, generation: {temperature: 0.8}}
  - {name: sft, kind: sft, train_data: [{kind: migrations, split: train}]}
  - {name: sft-self, kind: sft}
  - {name: memit, kind: edit, algorithm: memit, edit_data: [{kind: migrations, split: train}]}
  - {name: rome-self, kind: edit, algorithm: rome}
"""


def test_plan_runs_stochastic_methods_per_seed_and_groups_shared_training():
    jobs = {j.id: j for j in plan_jobs(parse_spec(__import__("yaml").safe_load(SEEDED)))}
    assert "reference__humaneval" not in jobs and "reference__migrations" in jobs
    assert "greedy__migrations" in jobs and "greedy__migrations__s1" not in jobs  # deterministic: once
    assert {f"sampled__humaneval__s{s}" for s in (0, 1, 2)} <= set(jobs)
    assert jobs["sft__migrations__s2"].seed == 2
    # trains on the train split only: one training per seed, shared by both datasets
    assert jobs["sft__migrations__s1"].group == jobs["sft__humaneval__s1"].group == "sft__s1"
    assert jobs["sft-self__migrations__s1"].group is None  # trains on what it is scored on: per dataset
    # an edit from the train split is made once and shared; one from the scored records is per dataset
    assert jobs["memit__migrations"].group == jobs["memit__humaneval"].group == "memit"
    assert jobs["rome-self__migrations"].group is None and "rome-self__migrations__s1" not in jobs
    assert split_job_id("sft__humaneval__s2") == ("sft", "humaneval", 2)
    assert split_job_id("greedy__migrations") == ("greedy", "migrations", None)
