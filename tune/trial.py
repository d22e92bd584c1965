"""One Ray Tune trial: the tuned method's own training path with a trial's parameters.

:func:`run_trial` builds the method's ``Options`` from the spec's options plus
the sampled parameters, asks the method module for its training job
(``training_job(records, options, context)``, the same function its
``predict`` uses) and runs it with ``jobs.training.runner.run_training``.
The runner's divergence guard reports every logging step through
``ray.train.report``; :class:`TrialReport` forwards those reports to Tune,
turning a diverged step into a finite penalty (Optuna rejects NaN and a trial
left hanging teaches the searcher nothing) and marking the trial diverged.
The guard has already stopped training at that step, so the trial ends there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from jobs.training.guards import Verdict
from tune.space import apply_params

DIVERGED = "diverged"  # result key: 1 when the trial diverged
DIAGNOSIS = "diagnosis"  # result key: the guard's one-line diagnosis
DIVERGED_AT = "diverged_at"  # result key: the step the trial diverged at (it trains on if not stopped)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (``tune.with_parameters`` puts it in the object store once)."""

    kind: str  # the tuned method's kind (sft, dpo, grpo, ...)
    options: dict[str, Any]  # its validated options from the spec
    records: list  # the training records (TaskRecords)
    model: dict  # the spec's model section
    root: Path  # trial work directories live under it
    metric: str
    penalty: float
    seed: int = 0
    use_gpu: bool = False
    stop_diverged: bool = True  # the guard stops a diverged trial at once (false: it only flags it)


class Objective:
    """Keeps the objective present and finite in every report of one trial."""

    def __init__(self, metric: str, penalty: float):
        self.metric, self.penalty = metric, penalty
        self.last: float | None = None
        self.diagnosis: str | None = None
        self.diverged_at: int | None = None

    def __call__(self, metrics: dict[str, Any]) -> dict[str, Any]:
        m = dict(metrics)
        m.pop("history", None)  # the runner's per-step list since its last report: the newest values are enough
        if "step" not in m and "global_step" in m:  # the end-of-training summary: ASHA counts training steps
            m["step"] = m["global_step"]
        value = m.get(self.metric)
        if self.diagnosis is None and m.get(DIVERGED):  # the runner's guard says why
            self.diagnosis = str(m[DIVERGED])
        if self.diagnosis is None and value is not None and not math.isfinite(float(value)):
            self.diagnosis = f"non-finite {self.metric} ({value}) at step {m.get('step', '?')}"
        if self.diagnosis is not None:
            if self.diverged_at is None:
                self.diverged_at = int(m.get("step", 0))
            m[self.metric], m[DIVERGED], m[DIAGNOSIS] = self.penalty, 1, self.diagnosis
            m[DIVERGED_AT] = self.diverged_at
        elif value is not None:
            self.last = float(value)
            m[DIVERGED] = 0
        elif self.last is not None:  # the end-of-training summary: carry the last objective
            m[self.metric], m[DIVERGED] = self.last, 0
        return m


class TrialReport(TuneReportCallback):
    """Forward Ray Train reports (rank 0's) to Tune through :class:`Objective`.

    ``tune.report`` returns only when Tune asks the trial for more (a stopped trial is killed instead),
    so returning is the scheduler's go-ahead: ``verdict`` records it for the workers waiting on it.
    """

    def __init__(self, metric: str, penalty: float, verdict: Verdict | None = None):
        super().__init__()
        self.objective, self.verdict = Objective(metric, penalty), verdict

    def after_report(self, run_context, metrics, checkpoint):
        m = self.objective(metrics[0])
        super().after_report(run_context, [m], checkpoint)
        if self.verdict is not None and "step" in m:
            self.verdict.grant(int(m["step"]))


def trial_options(setup: TrialSetup, params: dict[str, Any]):
    from jobs.methods.registry import method_module

    module = method_module(setup.kind)
    return module, module.Options.model_validate(apply_params(setup.options, params))


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune trainable: train once with ``params``; every step is reported by the runner."""
    from ray import tune

    from jobs.methods.registry import MethodContext
    from jobs.training.runner import VERDICT, run_training

    module, options = trial_options(setup, params)
    trial_id = tune.get_context().get_trial_id()
    context = MethodContext(model=setup.model, work_dir=setup.root / trial_id, seed=setup.seed,
                            use_gpu=setup.use_gpu)
    job = replace(module.training_job(setup.records, options, context), await_verdicts=True,
                  stop_on_divergence=setup.stop_diverged)
    run_training(job, callbacks=[TrialReport(setup.metric, setup.penalty, Verdict(context.work_dir / VERDICT))])
