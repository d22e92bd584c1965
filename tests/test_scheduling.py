"""How the driver schedules jobs on CPUs: which jobs start first, and how many CPUs (torch threads) a job
that computes in its own task gets. No Ray needed: these are the decisions, not their execution."""

from __future__ import annotations

import yaml

from orchestrator.driver import task_resources
from orchestrator.plan import plan_jobs, run_order
from orchestrator.spec import parse_spec
from tests.test_gpu_scheduling import SPEC as GPU_SPEC


def _spec():
    """The GPU-scheduling test's spec on CPUs, plus kinds with other costs and placements."""
    spec = yaml.safe_load(GPU_SPEC)
    spec["methods"] += [
        {"name": "prompt-http", "kind": "prompt",
         "backend": {"kind": "openai", "model": "m", "base_url": "http://localhost:1/v1"}},
        {"name": "rules", "kind": "rules"}, {"name": "grpo", "kind": "grpo"},
    ]
    return parse_spec({**spec, "resources": {"use_gpu": False}}, "sched")


def test_long_jobs_start_first_and_equals_keep_the_spec_order():
    order = [j.method.name for j in run_order(plan_jobs(_spec()))]
    assert order == ["grpo", "sft", "rome", "prompt-local", "prompt-actors", "prompt-http", "reference", "rules"]


def test_jobs_computing_in_their_task_get_their_share_of_cpus():
    spec = _spec()
    cpus = {j.method.name: task_resources(spec, j, cpus_per_job=4)["num_cpus"] for j in plan_jobs(spec)}
    # The model runs in the job's process: torch gets the job's share of the machine.
    assert cpus["prompt-local"] == 4 and cpus["rome"] == 4
    # Bookkeeping, HTTP, actors and Ray Train workers: the task itself needs one CPU (and waits).
    assert cpus["reference"] == cpus["rules"] == cpus["prompt-http"] == cpus["prompt-actors"] == 1
    assert cpus["sft"] == cpus["grpo"] == 1
    assert all(task_resources(spec, j)["num_cpus"] == 1 for j in plan_jobs(spec))  # the default share
