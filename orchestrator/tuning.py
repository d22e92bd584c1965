"""``python -m orchestrator tune SPEC``: a hyper-parameter search over one method's training options.

A search run lives in ``<artifacts>/<experiment>/<run-id>/`` like an experiment run:

```
spec.yaml            the validated spec, as run
tune/trials.csv      one row per trial: parameters, metric, state, steps, time, diagnosis
tune/trials.md       the same as a table
tune/best_spec.yaml  the spec with the best trial's parameters set, runnable with ``run``
plots/tune_lr.png    learning rate vs metric, diverged trials marked
ray_tune/search/     Ray Tune's own results (TensorBoard logs, Tuner.restore state)
trials/<trial-id>/   each trial's training work directory (checkpoints)
```

``tune --resume RUN_DIR`` continues an interrupted search with its searcher state.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Callable

import yaml

from data.io import atomic_write_text
from orchestrator.spec import ExperimentSpec, SpecError, dump_spec
from tune.search import TrialRow, best_row, run_search
from tune.space import apply_params
from tune.trial import TrialSetup

LR_KEY = "learning_rate"


def create_tune_run(spec: ExperimentSpec, root: Path) -> Path:
    """A search's run directory (local or shared directories only: trials write checkpoints there)."""
    from orchestrator.storage import is_uri, new_run_dir

    if is_uri(root):
        raise SpecError(f"{root}: a search writes to a local or shared directory, not a URI")
    return new_run_dir(spec, Path(root))


def training_records(spec: ExperimentSpec) -> list:
    """The tuned method trains on its ``train_data``; without it, on the spec's first dataset (as ``run`` does)."""
    from data.registry import load_dataset

    ds = spec.datasets[0]
    return load_dataset(ds.kind, ds.path, ds.limit, ds.control, ds.split)


def max_steps(kind: str, options: dict, num_records: int) -> int:
    """A trial's training steps (ASHA's ``max_t``): ``max_steps``, or epochs over the records (an upper bound)."""
    from jobs.methods.registry import method_module

    o = method_module(kind).Options.model_validate(options)
    if o.max_steps > 0:
        return o.max_steps
    return max(1, math.ceil(o.epochs * math.ceil(num_records / (o.batch_size * o.num_workers * o.grad_accum))))


def tune_experiment(spec: ExperimentSpec, run_dir: Path, resume: bool = False, address: str | None = None,
                    echo: Callable[[str], None] = print) -> tuple[list[TrialRow], TrialRow | None]:
    from orchestrator.driver import start_ray

    if spec.tune is None:
        raise SpecError("spec has no tune: section")
    t = spec.tune
    method = next(m for m in spec.methods if m.name == t.method)
    options = dict(method.options)
    options["cpus_per_worker"] = t.resources_per_trial.cpu
    if t.resources_per_trial.gpu:
        options["gpus_per_worker"] = t.resources_per_trial.gpu
    start_ray(spec, address)
    setup = TrialSetup(kind=method.kind, options=options, records=training_records(spec),
                       model=spec.model.model_dump(), root=(run_dir / "trials").resolve(), metric=t.metric,
                       penalty=t.penalty, seed=spec.seed, use_gpu=spec.resources.use_gpu,
                       stop_diverged=t.stop_diverged)
    echo(f"searching {len(t.space)} parameters of '{method.name}' with {t.search} "
         f"({t.num_samples} trials, {t.max_concurrent_trials} at once, scheduler {t.scheduler.kind})")
    steps = max_steps(method.kind, options, len(setup.records))
    rows = run_search(t, setup, run_dir / "ray_tune", steps, resume=resume)
    best = best_row(rows, t.mode)
    write_results(spec, run_dir, rows, best)
    return rows, best


def write_results(spec: ExperimentSpec, run_dir: Path, rows: list[TrialRow], best: TrialRow | None) -> None:
    out = run_dir / "tune"
    keys = sorted({k for r in rows for k in r.params})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial_id", *keys, spec.tune.metric, "state", "steps", "time_s", "diagnosis"])
    for r in rows:
        writer.writerow([r.trial_id, *(r.params.get(k, "") for k in keys), "" if r.metric is None else r.metric,
                         r.state, r.steps, round(r.time_s, 2), r.diagnosis])
    atomic_write_text(out / "trials.csv", buf.getvalue())
    atomic_write_text(out / "trials.md", render_table(rows, keys, spec.tune.metric))
    atomic_write_text(out / "summary.json", json.dumps(summarize(rows, best), indent=2) + "\n")
    if best is not None:
        atomic_write_text(out / "best_spec.yaml", best_spec(spec, best))
    plot_lr(rows, spec.tune.metric, run_dir / "plots" / "tune_lr.png")


def summarize(rows: list[TrialRow], best: TrialRow | None) -> dict:
    return {
        "trials": len(rows),
        "states": {s: sum(r.state == s for r in rows) for s in sorted({r.state for r in rows})},
        "total_steps": sum(r.steps for r in rows),
        "diverged_steps": sum(r.steps for r in rows if r.state == "diverged"),
        "best": None if best is None else {"trial_id": best.trial_id, "metric": best.metric, "params": best.params},
    }


def render_table(rows: list[TrialRow], keys: list[str], metric: str) -> str:
    head = ["trial", *keys, metric, "state", "steps", "time_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [_fmt(r.params.get(k)) for k in keys]
        m = "n/a" if r.metric is None else f"{r.metric:.4f}"
        state = f"{r.state}: {r.diagnosis}" if r.diagnosis else r.state
        lines.append("| " + " | ".join([r.trial_id, *vals, m, state, str(r.steps), f"{r.time_s:.1f}"]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))


def best_spec(spec: ExperimentSpec, best: TrialRow) -> str:
    """The spec as a plain experiment: the tuned method's options with the best parameters, no tune section."""
    data = yaml.safe_load(dump_spec(spec))
    data.pop("tune", None)
    for m in data["methods"]:
        if m["name"] == spec.tune.method:
            options = apply_params(m.pop("options", {}), best.params)
            m.update(options)
    header = f"# best trial {best.trial_id}: {spec.tune.metric}={best.metric:.6g}\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def plot_lr(rows: list[TrialRow], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker, color in (("done", "o", "tab:blue"), ("stopped", "s", "tab:gray"), ("diverged", "x", "tab:red")):
        pts = [(r.params[LR_KEY], r.metric) for r in rows if r.state == state and LR_KEY in r.params]
        if state == "diverged":  # no finite metric: mark them along the top edge
            finite = [r.metric for r in rows if r.metric is not None]
            top = max(finite) if finite else 1.0
            pts = [(lr, top) for lr, _ in pts]
        pts = [(lr, m) for lr, m in pts if m is not None]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, label=state)
    ax.set_xscale("log")
    ax.set_xlabel(LR_KEY)
    ax.set_ylabel(metric)
    ax.set_title("trials (diverged at the top edge)")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
