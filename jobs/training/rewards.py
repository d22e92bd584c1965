"""GRPO rewards: ReCode's rule-based reward and an execution reward run in the sandbox.

Every reward is a callable with the signature TRL's ``GRPOTrainer`` calls
(``reward(prompts=..., completions=..., completion_ids=..., **columns)``, one
float per completion; the dataset's extra columns arrive as lists aligned with
``completions``). Each instance carries ``__name__``, which TRL uses to log it
as ``rewards/<name>/mean``. :func:`build_rewards` turns the spec's
``{name: weight}`` mapping into ``(reward_funcs, reward_weights)``.

``recode`` (ReCode, Wu et al. 2025, arXiv 2506.20495)::

    R      = R_format + R_code
    R_format = +1  if the completion is <think>...</think><answer>...</answer> (whitespace around allowed)
               -1  otherwise
    code   = the first closed ```python (or py/python3) fenced block, comments and blank lines dropped
    R_code = -2                 if there is no such block or it does not parse
             ES* = 3.5*ES - 1.5 otherwise,  ES = 1 - Levenshtein(code, ref) / max(len(code), len(ref))

so ``recode`` lies in [-3, 3]. ``recode_em`` is the EM* variant: ``R_code = +2`` when ``code`` equals the
reference (both with comments and blank lines dropped, i.e. exactly when ES = 1), ``-1.5`` otherwise,
``-2`` as above.

``execution``: the completion's code (``data.prompts.extract_code``, as the eval job reads it) is run
against the record's tests in the sandbox; every completion of one GRPO step goes to the executor in ONE
``run`` call (identical programs once), so a step waits for the slowest program, not their sum::

    R_exec = w_runs  * [the code part ran and defines what the tests call]   (before any test)
           + w_tests * (tests passed / tests)
           + w_new   * [the update's new API is used]  (jobs.evaluation.api_check; unknown counts 0)
           - w_old   * [the deprecated API is still used]

"Defines what the tests call" is the eval job's ``exec_ok`` rule (``metrics.names_tests_need`` /
``metrics.defines``): the names the tests read that neither they, the setup nor the update bind must be bound
by the completion, so ``x = 1`` running earns nothing for "ran" where the tests call ``f``.

Code that does not parse is not executed (it scores only its API terms, which are then unknown: 0); a
completion with no code at all (blank, prose without a block, an empty block) scores 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from jobs.evaluation.metrics import defines, edit_similarity, has_code, names_tests_need, strip_comments, syntax_ok
from jobs.sandbox.executor import ExecResult, Executor, Program

_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.S)
_PY_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.S | re.I)

NO_CODE = -2.0  # no fenced python block, or it does not parse
EM_HIT, EM_MISS = 2.0, -1.5


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes a string (standard) or a list of messages (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    return str(completion)


def format_score(text: str) -> float:
    return 1.0 if _FORMAT.fullmatch(text) else -1.0


def first_python_block(text: str) -> str | None:
    match = _PY_BLOCK.search(text)
    return match.group(1) if match else None


def recode_score(text: str, reference: str, metric: str = "es") -> float:
    """ReCode's reward for one completion (formula in the module docstring); ``metric`` is ``es`` or ``em``."""
    score = format_score(text)
    code = first_python_block(text)
    if code is None or not has_code(code) or not syntax_ok(code):  # an empty block is no code either
        return score + NO_CODE
    if metric == "em":
        return score + (EM_HIT if strip_comments(code) == strip_comments(reference) else EM_MISS)
    return score + 3.5 * edit_similarity(code, reference) - 1.5


class RecodeReward:
    """ReCode's reward (ES* or EM*); needs the dataset column ``reference``."""

    def __init__(self, metric: str = "es"):
        if metric not in ("es", "em"):
            raise ValueError(f"recode reward metric must be 'es' or 'em', not {metric!r}")
        self.metric = metric
        self.__name__ = "recode" if metric == "es" else "recode_em"

    def __call__(self, prompts: Sequence, completions: Sequence, reference: Sequence[str | None] = (),
                 **_: Any) -> list[float | None]:
        if len(reference) != len(completions):
            raise ValueError("recode reward needs a 'reference' column in the GRPO dataset")
        # No reference: this reward cannot judge the completion (None = NaN, ignored by TRL's weighted sum).
        return [None if ref is None else recode_score(completion_text(c), ref, self.metric)
                for c, ref in zip(completions, reference)]


@dataclass(frozen=True)
class ExecutionWeights:
    runs: float = 0.5
    tests: float = 1.0
    new_api: float = 0.25
    old_api: float = 0.25  # subtracted when the deprecated API is still used


def reward_columns(record, with_update: bool = True) -> dict[str, Any]:
    """The dataset columns the rewards read, for one ``TaskRecord`` (see ``jobs.methods.grpo``)."""
    return {
        "reference": record.reference,
        "code_prefix": record.code_for("", with_update=with_update),  # setup + the API update
        "tests": list(record.tests),
        "new_api": record.update.new_api,
        "old_api": record.update.old_api,
    }


class ExecutionReward:
    """Runs every completion of a step in ONE executor call (``jobs.sandbox.pool.SandboxPool`` or any ``Executor``).

    ``executor`` may be a zero-argument factory: it is then built on first use, in the process that
    trains (an executor holding live sandbox servers does not pickle into a Ray Train worker).
    Columns: ``code_prefix``, ``tests``, ``new_api``, ``old_api``. Programs run under the executor's own
    interpreter: records that need a per-problem environment (GitChameleon) are not supported here yet.
    """

    def __init__(self, executor: Executor | Callable[[], Executor], weights: ExecutionWeights = ExecutionWeights(),
                 timeout_s: float = 5.0):
        self.__name__ = "execution"  # TRL logs it as rewards/execution/mean
        self._executor = executor
        self._owned = False  # built here from a factory: ours to close
        self.weights = weights
        self.timeout_s = timeout_s

    @property
    def executor(self) -> Executor:
        if not hasattr(self._executor, "run"):
            self._executor = self._executor()
            self._owned = True
        return self._executor

    def close(self) -> None:
        """Stop an executor this reward built from its factory (a shared pool is left alone)."""
        if self._owned and hasattr(self._executor, "close"):
            self._executor.close()

    def __call__(self, prompts: Sequence, completions: Sequence, code_prefix: Sequence[str] = (),
                 tests: Sequence[Sequence[str]] = (), new_api: Sequence[str | None] = (),
                 old_api: Sequence[str | None] = (), log_metric: Callable[[str, float], None] | None = None,
                 **_: Any) -> list[float]:
        from data.prompts import extract_code
        from jobs.evaluation.api_check import check_api

        n = len(completions)
        if not (len(code_prefix) == len(tests) == n):
            raise ValueError("execution reward needs 'code_prefix' and 'tests' columns in the GRPO dataset")
        new_api = list(new_api) or [None] * n
        old_api = list(old_api) or [None] * n
        codes = [extract_code(completion_text(c)) or "" for c in completions]
        # A blank or code-less completion earns nothing: no run, no API terms (an empty program "runs").
        parsed = [has_code(code) and syntax_ok(code) for code in codes]
        # One batch for the whole step; identical programs (common within a GRPO group) run once.
        unique: dict[Program, int] = {}
        owners: list[list[int]] = []
        for i in range(n):
            slots = []
            if parsed[i]:
                prefix = code_prefix[i] + codes[i]
                for test in tests[i] or [""]:  # no tests: still learn whether the code runs
                    slots.append(unique.setdefault(Program(prefix, test), len(unique)))
            owners.append(slots)
        results: list[ExecResult] = self.executor.run(list(unique), self.timeout_s) if unique else []

        w = self.weights
        rewards, ran, passed = [], 0, 0.0
        for i in range(n):
            runs = [results[k] for k in owners[i]]
            # Running is the candidate's merit only if it defines what the tests call (as the eval job's exec_ok).
            need = names_tests_need(tests[i] or (), code_prefix[i])
            code_ran = any(r.code_ok for r in runs) and defines(codes[i], need)
            frac = sum(r.passed for r in runs) / len(runs) if runs and tests[i] else 0.0
            usage = check_api(codes[i], new_api[i], old_api[i]) if parsed[i] else None
            score = w.runs * code_ran + w.tests * frac
            if usage is not None:
                score += w.new_api * (usage.uses_new is True) - w.old_api * (usage.uses_old is True)
            rewards.append(score)
            ran += code_ran
            passed += frac
        if log_metric is not None and n:
            log_metric("execution/code_ran", ran / n)
            log_metric("execution/tests_passed", passed / n)
            log_metric("execution/programs", float(len(unique)))
        return rewards


REWARDS = ("recode", "recode_em", "execution")


def build_rewards(weights: dict[str, float], executor: Executor | Callable[[], Executor] | None = None,
                  execution_weights: ExecutionWeights = ExecutionWeights(), timeout_s: float = 5.0
                  ) -> tuple[list[Callable], list[float]]:
    """``(reward_funcs, reward_weights)`` for ``GRPOTrainer``/``GRPOConfig`` from ``{reward name: weight}``."""
    funcs, out = [], []
    for name, weight in weights.items():
        if name in ("recode", "recode_em"):
            funcs.append(RecodeReward("es" if name == "recode" else "em"))
        elif name == "execution":
            if executor is None:
                raise ValueError("the execution reward needs an executor")
            funcs.append(ExecutionReward(executor, execution_weights, timeout_s))
        else:
            raise ValueError(f"unknown reward '{name}' (known: {', '.join(REWARDS)})")
        out.append(float(weight))
    if not funcs:
        raise ValueError("GRPO needs at least one reward")
    return funcs, out
