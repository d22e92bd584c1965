"""Intervals and paired differences: they cover what they should, and a real difference is detected."""

from __future__ import annotations

import numpy as np

from jobs.evaluation.intervals import direction, paired_difference, rate, verdict
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
