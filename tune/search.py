"""A search: Ray Tune's ``Tuner`` with ``OptunaSearch`` (TPE or random) and ASHA, and its trial table.

Tune's own result directory (``<storage>/search``: per-trial ``result.json``,
``progress.csv`` and TensorBoard event files, the experiment state with the
searcher's) is kept as Tune writes it, so ``tensorboard --logdir`` and
``Tuner.restore`` work on it; :func:`run_search` with ``resume=True``
continues an interrupted search from there, searcher state included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.space import LAYER_START, TuneSpec, define_space, layer_range
from tune.trial import DIAGNOSIS, DIVERGED, DIVERGED_AT, TrialSetup, run_trial

EXPERIMENT = "search"


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    metric: float | None
    state: str  # done | stopped (by ASHA) | diverged | error
    steps: int  # training steps the trial ran
    time_s: float
    diagnosis: str = ""
    diverged_at: int | None = None  # the step the guard flagged (the trial ran on to `steps` if not stopped)
    extra: dict[str, Any] = field(default_factory=dict)


def num_layers(model: dict) -> int:
    from jobs.inference.models import load_config

    return load_config(model).num_hidden_layers


def _trainable(setup: TrialSetup):
    from ray import tune

    # The trial function only waits on its Ray Train workers, which hold the trial's CPUs/GPUs.
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"CPU": 0.01})


def make_sampler(spec: TuneSpec):
    """TPE over all parameters jointly, or random sampling of the same space (a baseline)."""
    import optuna

    if spec.search == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    # multivariate: learning rate, LoRA scale and layer range interact (their joint density, not one per
    # parameter); constant_liar: the running trials count as bad guesses, so concurrent trials spread out.
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.startup_trials, multivariate=True,
                                      constant_liar=True)


def _tuner(spec: TuneSpec, setup: TrialSetup, layers: int, storage: Path, max_steps: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=define_space(spec.space, layers), metric=spec.metric, mode=spec.mode,
                            sampler=make_sampler(spec))
    if spec.scheduler.kind == "asha":
        # Training steps, not Tune iterations: the runner batches several steps into one report.
        scheduler = ASHAScheduler(time_attr="step", max_t=max(max_steps, spec.scheduler.grace_period),
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor,
                                  stop_last_trials=False)  # a trial at max_t finishes (and says so: "done")
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        _trainable(setup),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.max_concurrent_trials, metric=spec.metric,
                                    mode=spec.mode),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(storage), verbose=0),
    )


def run_search(spec: TuneSpec, setup: TrialSetup, storage: Path, max_steps: int, resume: bool = False
               ) -> list[TrialRow]:
    """Run (or continue) the search; one row per trial."""
    from ray import tune

    storage = storage.resolve()
    path = storage / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=_trainable(setup), resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = _tuner(spec, setup, num_layers(setup.model), storage, max_steps)
    grid = tuner.fit()
    return [_row(grid[i], spec.metric, setup.root, max_steps) for i in range(len(grid))]


def _row(result, metric: str, trials_root: Path, max_steps: int) -> TrialRow:
    from jobs.training.guards import steps_done
    from jobs.training.runner import PROGRESS

    m = result.metrics or {}
    params = {k: v for k, v in (result.config or {}).items()}
    layers = layer_range(params)
    if layers is not None:  # the table shows the range's start too, not only the sampled end and width
        params[LAYER_START] = layers[0]
    value = m.get(metric)
    state = "error" if result.error is not None else DIVERGED if m.get(DIVERGED) else None
    first_line = str(result.error).strip().splitlines()[0][:200] if result.error is not None else ""
    trial_id = str(m.get("trial_id") or Path(result.path).name)
    # What the trial ran (rank 0 counts every step), not only what it had reported when it was stopped.
    steps = max(int(m.get("global_step") or m.get("step") or 0), steps_done(trials_root / trial_id / PROGRESS))
    if state is None:  # all its steps run, even when its end-of-training summary never reached Tune
        state = "done" if m.get("final") or steps >= max_steps else "stopped"
    return TrialRow(
        trial_id=trial_id,
        params=params,
        metric=float(value) if value is not None and state != DIVERGED and math.isfinite(float(value)) else None,
        state=state,
        steps=steps,
        time_s=float(m.get("time_total_s") or 0.0),
        diagnosis=str(m.get(DIAGNOSIS) or first_line),
        diverged_at=int(m[DIVERGED_AT]) if m.get(DIVERGED_AT) is not None else None,
    )


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    usable = [r for r in rows if r.metric is not None and r.state in ("done", "stopped")]
    if not usable:
        return None
    return (min if mode == "min" else max)(usable, key=lambda r: r.metric)
