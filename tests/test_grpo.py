"""GRPO: options validation, the prompt rows, and a tiny two-worker run on Ray Train that logs its rewards."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from data.migrations import load_migrations
from data.records import Environment
from jobs.methods.grpo import THINK_ANSWER, Options, grpo_rows, messages
from jobs.methods.registry import MethodContext


def stdlib_records(n: int):
    # stdlib updates: a completion that happens to parse runs on the light sandbox server
    return [r for r in load_migrations() if r.update.library == "python" and r.reference and r.tests][:n]


def test_options_reject_unknown_rewards_and_bad_groups():
    with pytest.raises(ValidationError, match="unknown reward 'bleu'"):
        Options(rewards={"bleu": 1.0})
    with pytest.raises(ValidationError, match="num_generations: 3 must divide"):
        Options(batch_size=2, num_workers=2, num_generations=3)
    assert Options(batch_size=2, num_workers=2, num_generations=4).rewards == {"recode": 1.0}


def test_rows_carry_the_reward_columns_and_the_format_instruction():
    recs = stdlib_records(2)
    rows = grpo_rows(recs, Options(rewards={"recode": 1.0, "execution": 1.0}))
    assert len(rows) == 2
    row, rec = rows[0], recs[0]
    assert row["reference"] == rec.reference and row["tests"] == list(rec.tests)
    assert row["code_prefix"] == rec.code_for("") and row["new_api"] == rec.update.new_api
    assert row["prompt"][0]["role"] == "system" and row["prompt"][0]["content"].endswith(THINK_ANSWER.strip())
    assert rec.prompt.strip() in row["prompt"][1]["content"]
    needs_env = replace(rec, env=Environment(python="3.9"))  # its programs can't run in the sandbox's interpreter
    assert len(grpo_rows([needs_env], Options(rewards={"recode": 1.0}))) == 1
    assert grpo_rows([needs_env], Options(rewards={"execution": 1.0})) == []
    plain = messages(rec, Options(instruction=""))
    assert "<think>" not in plain[0]["content"]


def test_local_sandbox_factory_pickles_and_builds_on_use():
    import pickle

    from jobs.methods.grpo import LocalSandboxFactory
    from jobs.sandbox.slots import SandboxExecutor
    from jobs.training.rewards import ExecutionReward

    reward = pickle.loads(pickle.dumps(ExecutionReward(LocalSandboxFactory(1))))  # as sent to a Ray Train worker
    fence = "```"
    assert reward(prompts=["p"], completions=[f"{fence}python\nx = 1\n{fence}"], code_prefix=[""], tests=[[]]) == [0.5]
    assert isinstance(reward.executor, SandboxExecutor)
    reward.close()


@pytest.mark.slow
@pytest.mark.ray_subprocess  # starts Ray in-process (issue #27)
def test_grpo_on_two_workers_with_the_runs_sandbox_pool_logs_rewards(tmp_path):
    """One Ray instance for both: the reward through a sandbox pool, then a tiny GRPO run given that pool."""
    import ray

    from jobs.methods.grpo import predict
    from jobs.sandbox.pool import SandboxPool
    from jobs.training.rewards import ExecutionReward

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="apimig")
    try:
        pool = SandboxPool.start(size=1, preload=("math",), name="sandbox-run")
        fence = "```"
        out = ExecutionReward(pool)(prompts=["p"] * 2, completions=[f"{fence}python\nx = {v}\n{fence}" for v in (2, 3)],
                                    code_prefix=["", ""], tests=[["assert x == 2"]] * 2)
        assert out == [1.5, 0.5]  # runs + its test passed; runs, test failed
        assert sum(s["done"] for s in pool.stats()) == 2

        options = Options(
            rewards={"recode": 1.0, "execution": 0.5}, executor="pool", max_steps=2, batch_size=2, num_workers=2,
            cpus_per_worker=0.5, num_generations=4, max_completion_length=12, save_steps=100,
            generation={"max_new_tokens": 8, "batch_size": 4},
        )
        context = MethodContext(model={"name": "tiny"}, work_dir=tmp_path / "run" / "work" / "grpo", seed=0,
                                executor=pool)
        out = predict(stdlib_records(2), options, context)
    finally:
        ray.shutdown()
    assert out.diverged is None
    # The adapter answered every record; the random tiny model writes no code block, so its answers are no
    # answer (None) through the one answer path. That answers improve is tests/test_real_model.py's job.
    assert len(out.codes) == 2 and all(c is None or isinstance(c, str) for c in out.codes)
    assert Path(json.loads(out.files["training.json"])["adapter_dir"]).is_dir()
    assert out.train_time_s > 0 and out.metrics["global_step"] == 2 and out.metrics["num_workers"] == 2
    assert 0 < out.metrics["trainable_params"] < out.metrics["total_params"]
    history = [json.loads(line) for line in out.files["rewards.jsonl"].splitlines()]
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        assert -3.0 <= h["rewards/recode/mean"] <= 3.0
        assert "rewards/execution/mean" in h and "execution/code_ran" in h  # ran on the workers
        # TRL's total reward is the spec's weighted sum of the per-reward means
        assert h["reward"] == pytest.approx(h["rewards/recode/mean"] + 0.5 * h["rewards/execution/mean"], abs=1e-4)
    assert out.metrics["reward_first"] == history[0]["reward"]
