"""GRPO rewards: ReCode's formula on fixed strings (values computed by hand) and the execution reward."""

from __future__ import annotations

import pytest

from jobs.sandbox.executor import Program
from jobs.sandbox.slots import SandboxExecutor
from jobs.training.rewards import ExecutionReward, ExecutionWeights, RecodeReward, build_rewards, recode_score

# Stripped of comments and blank lines: "def f(x):\n    return x + 1" = 9 + 1 + 16 = 26 characters.
REF = "def f(x):\n    return x + 1\n"
FENCE = "```"


def block(code: str, tag: str = "python") -> str:
    return f"{FENCE}{tag}\n{code}{FENCE}"


def test_recode_exact_answer_in_format():
    code = "def f(x):\n    return x + 1  # inc\n"
    text = "<think>add one</think>\n<answer>\n" + block(code) + "\n</answer>\n"
    # format +1; the comment is dropped, so ES = 1 and ES* = 3.5 - 1.5 = 2; EM* = +2
    assert recode_score(text, REF) == pytest.approx(3.0)
    assert recode_score(text, REF, "em") == pytest.approx(3.0)


def test_recode_near_miss_without_format():
    text = "Here:\n" + block("def f(x):\n    return x + 2\n")
    # format -1; one substitution in 26 chars: ES = 25/26, ES* = 3.5*25/26 - 1.5 = 1.865384...
    assert recode_score(text, REF) == pytest.approx(-1 + 3.5 * 25 / 26 - 1.5)
    assert recode_score(text, REF) == pytest.approx(0.8653846, abs=1e-6)
    # EM*: not identical, -1.5; total -2.5
    assert recode_score(text, REF, "em") == pytest.approx(-2.5)


def test_recode_comments_and_blank_lines_are_dropped_before_the_distance():
    text = "<think>t</think><answer>" + block("# helper\n\ndef f(x):\n\n    return x+1\n") + "</answer>"
    # stripped candidate "def f(x):\n    return x+1" (24 chars): 2 deletions, max length 26 -> ES = 24/26
    # 1 + 3.5*24/26 - 1.5 = 2.730769...
    assert recode_score(text, REF) == pytest.approx(2.7307692, abs=1e-6)


def test_recode_no_block_or_unparsable_block():
    # format +1, the block does not parse: -2 -> -1
    assert recode_score("<think>x</think><answer>" + block("def f(x) return\n") + "</answer>", REF) == -1.0
    # no format (-1) and an untagged fence is no python block (-2) -> -3; same for EM*
    assert recode_score(block("def f(x):\n    return x + 1\n", tag=""), REF) == -3.0
    assert recode_score("def f(x): return x + 1", REF, "em") == -3.0
    # an unclosed fence (generation cut off) is no block either
    assert recode_score(f"{FENCE}python\ndef f(x):\n    return x + 1\n", REF) == -3.0
    # the answer tag without a think part is not the format: -1 + ES* 2 = 1
    assert recode_score("<answer>" + block(REF) + "</answer>", REF) == pytest.approx(1.0)


def test_recode_reward_trl_signature_and_conversational_completions():
    reward = RecodeReward()
    completions = [[{"role": "assistant", "content": block(REF)}], "nothing"]
    out = reward(prompts=["p", "p"], completions=completions, completion_ids=[[1], [2]],
                 reference=[REF, None], trainer_state=None)
    assert out == [pytest.approx(1.0), None]  # -1 + 2; no reference -> not scored
    assert reward.__name__ == "recode" and RecodeReward("em").__name__ == "recode_em"
    with pytest.raises(ValueError, match="reference"):
        reward(prompts=["p"], completions=["x"])


def test_build_rewards_weights_and_errors():
    funcs, weights = build_rewards({"recode": 1.0, "recode_em": 0.5})
    assert [f.__name__ for f in funcs] == ["recode", "recode_em"] and weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        build_rewards({"bleu": 1.0})
    with pytest.raises(ValueError, match="needs an executor"):
        build_rewards({"execution": 1.0})


class CountingExecutor:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def run(self, programs, timeout_s):
        self.calls.append(list(programs))
        return self.inner.run(programs, timeout_s)


def test_execution_reward_runs_one_batch_in_the_sandbox():
    tests = ["assert f(9) == 3", "assert f(10) == 3"]
    codes = [
        "def f(x):\n    return math.isqrt(x)\n",  # runs, 2/2, new API: 0.5 + 1 + 0.25 = 1.75
        "def f(x):\n    return int(math.sqrt(x))\n",  # runs, 2/2, old API: 0.5 + 1 - 0.25 = 1.25
        "def f(x):\n    return 3 if x == 9 else 0\n",  # runs, 1/2, neither API: 0.5 + 0.5 = 1.0
        "raise RuntimeError('at import')\n",  # code part fails, no test passes: 0
        "def f(x) return\n",  # does not parse: not executed, 0
        "def f(x):\n    return math.isqrt(x)\n",  # a duplicate of the first: same reward, not run again
    ]
    completions = [[{"role": "assistant", "content": block(c)}] for c in codes]
    n = len(codes)
    logged = {}
    with SandboxExecutor(parallelism=2, preload=("math",)) as sandbox:
        executor = CountingExecutor(sandbox)
        reward = ExecutionReward(lambda: executor, ExecutionWeights(), timeout_s=10)
        out = reward(prompts=["p"] * n, completions=completions, code_prefix=["import math\n"] * n,
                     tests=[tests] * n, new_api=["math.isqrt"] * n, old_api=["math.sqrt"] * n,
                     log_metric=logged.__setitem__)
    assert out == pytest.approx([1.75, 1.25, 1.0, 0.0, 0.0, 1.75])
    assert len(executor.calls) == 1  # the whole step in one executor call
    assert len(executor.calls[0]) == 4 * 2  # 4 distinct parsable programs x 2 tests
    assert all(isinstance(p, Program) and p.code.startswith("import math\n") for p in executor.calls[0])
    assert logged["execution/code_ran"] == pytest.approx(4 / 6)
    assert logged["execution/programs"] == 8.0


def test_execution_reward_without_tests_scores_running_code():
    with SandboxExecutor(parallelism=1, preload=("math",)) as sandbox:
        reward = ExecutionReward(sandbox, ExecutionWeights(runs=1.0, tests=1.0, new_api=0.0, old_api=0.0))
        out = reward(prompts=["p", "p"], completions=[block("x = 1\n"), block("x = 1 / 0\n")],
                     code_prefix=["", ""], tests=[[], []])
        reward.close()  # an executor passed in is not the reward's to stop
        assert reward(prompts=["p"], completions=[block("x = 2\n")], code_prefix=[""], tests=[[]]) == [1.0]
    assert out == [1.0, 0.0]


def test_a_completion_with_no_code_earns_nothing():
    """Blank, prose-only and empty-block completions: no execution reward (an empty program 'runs') and
    ReCode's no-code penalty, so a policy cannot learn to say nothing."""
    blanks = ["", "   \n", "I would use the new API here.", block("\n"), block("# TODO\n")]
    with SandboxExecutor(parallelism=1) as sandbox:
        executor = CountingExecutor(sandbox)
        reward = ExecutionReward(executor, ExecutionWeights(), timeout_s=10)
        n = len(blanks)
        out = reward(prompts=["p"] * n, completions=blanks, code_prefix=[""] * n, tests=[[]] * n,
                     new_api=["math.isqrt"] * n, old_api=["math.sqrt"] * n)
    assert out == [0.0] * len(blanks) and executor.calls == []
    assert recode_score(block("\n"), REF) == recode_score("no code at all", REF) == -1.0 - 2.0


def test_code_that_runs_but_does_not_define_what_the_tests_call_earns_nothing():
    """The eval job's exec_ok rule (metrics.names_tests_need / defines): `x = 1` runs, but the tests call `f`."""
    tests = ["assert f(2) == 3"]
    codes = ["x = 1\n", "def f(x):\n    return x + 1\n", "import math\nf = lambda x: x + 1\n"]
    logged = {}
    with SandboxExecutor(parallelism=1) as sandbox:
        reward = ExecutionReward(sandbox, ExecutionWeights(), timeout_s=10)
        out = reward(prompts=["p"] * 3, completions=[block(c) for c in codes], code_prefix=["import math\n"] * 3,
                     tests=[tests] * 3, log_metric=logged.__setitem__)
    # x = 1: 0 for "ran" (not 0.5), no test passes; a definition of f: 0.5 + 1.0
    assert out == pytest.approx([0.0, 1.5, 1.5])
    assert logged["execution/code_ran"] == pytest.approx(2 / 3)
