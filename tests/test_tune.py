"""Search spaces, the diverged-trial objective and the tune section of specs (no Ray here)."""

from __future__ import annotations

import math

import optuna
import pytest

from orchestrator.spec import SpecError, parse_spec
from tune.search import TrialRow, best_row, make_sampler
from tune.space import (
    LAYER_END,
    LAYER_START,
    LAYER_WIDTH,
    LayerRange,
    Range,
    TuneSpec,
    apply_params,
    define_space,
    layer_range,
)
from tune.trial import DIAGNOSIS, DIVERGED, DIVERGED_AT, Objective, TrialSetup, run_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(space, num_layers, n=200, seed=0, sampler=None):
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=seed))
    suggest = define_space(space, num_layers)
    study.optimize(lambda t: (suggest(t), 0.0)[1], n_trials=n)
    return study


def _sample(space, num_layers, n=200, seed=0):
    return [t.params for t in _study(space, num_layers, n, seed).trials]


def test_layer_ranges_are_always_valid_and_cover_the_model():
    study = _study({"layers": LayerRange(min_width=2)}, num_layers=6)
    pairs = {layer_range(t.params) for t in study.trials}
    assert all(0 <= s and s + 1 <= e <= 5 for s, e in pairs)
    assert {s for s, _ in pairs} == set(range(5)) and {e for _, e in pairs} == set(range(1, 6))
    # Fixed bounds: every trial suggests the pair from the same distributions (what multivariate TPE needs).
    assert len({repr(sorted(t.distributions.items())) for t in study.trials}) == 1


def test_tpe_models_the_layer_range_jointly_with_the_learning_rate():
    space = {"learning_rate": Range(low=1e-4, high=1.0, log=True), "layers": LayerRange()}
    sampler = make_sampler(TuneSpec(method="m", space=space, startup_trials=3, seed=0))
    study = _study(space, num_layers=4, n=5, sampler=sampler)
    joint = sampler.infer_relative_search_space(study, study.trials[-1])
    assert set(joint) == {"learning_rate", LAYER_END, LAYER_WIDTH}


def test_a_layer_range_wider_than_the_layers_below_its_end_starts_at_zero():
    assert layer_range({LAYER_END: 2, LAYER_WIDTH: 2}) == (1, 2)
    assert layer_range({LAYER_END: 2, LAYER_WIDTH: 4}) == (0, 2)
    assert layer_range({LAYER_START: 1, LAYER_END: 3}) == (1, 3)  # a search from before layer_width
    assert layer_range({"learning_rate": 0.1}) is None


def test_log_uniform_learning_rate_spans_its_decades():
    lrs = [p["learning_rate"] for p in _sample({"learning_rate": Range(low=1e-5, high=1e-1, log=True)}, 4)]
    assert all(1e-5 <= lr <= 1e-1 for lr in lrs)
    decades = {math.floor(math.log10(lr)) for lr in lrs}
    assert decades == {-5, -4, -3, -2}  # uniform in log space reaches every decade


def test_apply_params_sets_dotted_paths_and_makes_the_adapter_hierarchical():
    base = {"learning_rate": 1e-3, "adapter": {"rank": 8, "scope": "standard"}}
    out = apply_params(base, {"learning_rate": 0.1, "adapter.rank": 4, LAYER_END: 2, LAYER_WIDTH: 2})
    assert out == {"learning_rate": 0.1, "adapter": {"rank": 4, "scope": "hierarchical", "layers": [1, 2]}}
    assert base["adapter"]["rank"] == 8  # the spec's options are not modified


def test_a_diverged_trial_reports_a_finite_penalty_from_then_on():
    obj = Objective("loss", penalty=1000.0)
    assert obj({"step": 1, "loss": 2.5}) == {"step": 1, "loss": 2.5, DIVERGED: 0}
    bad = obj({"step": 2, "loss": float("nan")})
    assert bad["loss"] == 1000.0 and bad[DIVERGED] == 1 and "non-finite loss" in bad[DIAGNOSIS]
    final = obj({"train_loss": 3.0, "final": 1})  # the summary after the guard stopped training
    assert final["loss"] == 1000.0 and final[DIVERGED] == 1


def test_a_diverged_trial_records_the_step_it_diverged_at():
    obj = Objective("eval_loss", penalty=1000.0)
    assert DIVERGED_AT not in obj({"step": 1, "loss": 7.0})
    assert obj({"step": 3, "loss": 7.1, "diverged": "gradient norm collapsed to 0 at step 3"})[DIVERGED_AT] == 3
    later = obj({"step": 9, "loss": 7.2})  # a trial told not to stop trains on: still diverged at 3
    assert later[DIVERGED_AT] == 3 and later["eval_loss"] == 1000.0


@pytest.mark.parametrize("stop", [True, False])
def test_a_trial_runs_the_methods_training_job_with_the_searchs_divergence_setting(stop, tmp_path, monkeypatch):
    import ray.tune

    import jobs.training.runner as runner
    import tune.trial
    from orchestrator.tuning import training_records

    jobs = []
    monkeypatch.setattr(runner, "run_training", lambda job, callbacks: jobs.append(job))
    monkeypatch.setattr(tune.trial, "TrialReport", lambda *args: None)  # Tune's callback needs a Tune session
    monkeypatch.setattr(ray.tune, "get_context", lambda: type("C", (), {"get_trial_id": lambda self: "t1"})())
    spec = parse_spec({**SPEC, "methods": SPEC["methods"][1:]})
    setup = TrialSetup(kind="sft", options={"max_steps": 4}, records=training_records(spec),
                       model={"name": "tiny"}, root=tmp_path, metric="loss", penalty=1000.0, stop_diverged=stop)
    run_trial({"learning_rate": 0.5}, setup)
    (job,) = jobs
    assert job.stop_on_divergence is stop and job.await_verdicts and job.options.learning_rate == 0.5
    assert job.work_dir == tmp_path / "t1"


def test_the_guards_own_diagnosis_is_kept_and_summaries_carry_the_last_value():
    obj = Objective("loss", penalty=1000.0)
    assert obj({"step": 1, "loss": 2.0})[DIVERGED] == 0
    assert obj({"global_step": 5, "final": 1})["loss"] == 2.0
    guard = Objective("loss", penalty=1000.0)
    out = guard({"step": 3, "loss": 80.0, "diverged": "loss exploded to 80 (first 2) at step 3"})
    assert out[DIAGNOSIS].startswith("loss exploded") and out["loss"] == 1000.0


def test_the_end_of_training_summary_counts_its_steps_for_asha():
    obj = Objective("eval_loss", penalty=1000.0)
    assert obj({"step": 0, "eval_loss": 7.9})[DIVERGED] == 0
    assert obj({"step": 3, "loss": 7.5}) == {"step": 3, "loss": 7.5, "eval_loss": 7.9, DIVERGED: 0}
    final = obj({"global_step": 8, "eval_loss": 7.1, "final": 1})
    assert final["step"] == 8 and final["eval_loss"] == 7.1


def test_asha_max_t_is_the_trials_training_steps():
    from orchestrator.tuning import max_steps

    assert max_steps("sft", {"max_steps": 32}, 1000) == 32
    # 2 epochs of 61 records at 4 per worker x 2 workers: 8 steps an epoch
    assert max_steps("sft", {"epochs": 2, "batch_size": 4, "num_workers": 2}, 61) == 16


def test_best_row_ignores_diverged_and_failed_trials():
    rows = [TrialRow("a", {}, None, "diverged", 3, 1.0), TrialRow("b", {}, 2.0, "done", 10, 1.0),
            TrialRow("c", {}, 1.5, "stopped", 5, 1.0), TrialRow("d", {}, None, "error", 0, 1.0)]
    assert best_row(rows, "min").trial_id == "c"
    assert best_row(rows, "max").trial_id == "b"
    assert best_row(rows[:1], "min") is None


SPEC = {
    "name": "t",
    "datasets": [{"name": "migrations"}],
    "methods": [{"name": "ref", "kind": "reference"}, {"name": "ft", "kind": "sft", "max_steps": 4}],
}


@pytest.mark.parametrize("tune, expected", [
    ({"method": "nope", "space": {"learning_rate": {"low": 1e-4, "high": 1}}}, "tune.method: no method named 'nope'"),
    ({"method": "ref", "space": {"learning_rate": {"low": 1e-4, "high": 1}}}, "does not train"),
    ({"method": "ft", "space": {"learnig_rate": {"low": 1e-4, "high": 1}}}, "tune.space.learnig_rate"),
    ({"method": "ft", "space": {"learning_rate": {"low": 0, "high": 1, "log": True}}}, "log-uniform range needs low > 0"),
    ({"method": "ft", "space": {"adapter.rank": []}}, "empty list"),
    ({"method": "ft", "space": {"layers": {"low": 0, "high": 3}}}, "tune.space.layers"),
    ({"method": "ft", "space": {}}, "tune.space"),
    ({"method": "ft", "metric": "eval_loss", "space": {"learning_rate": {"low": 1e-4, "high": 1}}},
     "give method 'ft' a validation: section"),
])
def test_bad_tune_sections_are_one_line_errors(tune, expected):
    with pytest.raises(SpecError) as err:
        parse_spec({**SPEC, "tune": tune})
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_good_tune_section_validates():
    spec = parse_spec({**SPEC, "tune": {"method": "ft", "space": {
        "learning_rate": {"low": 1e-4, "high": 1.0, "log": True}, "adapter.rank": [4, 8], "layers": {}}}})
    assert spec.tune.penalty == 1000.0 and spec.tune.scheduler.kind == "asha"


TUNE_SPEC = """\
name: tune-e2e
model: {name: tiny}
datasets: [{name: migrations, split: train, limit: 16}]
methods:
  - {name: sft, kind: sft, max_steps: 6, batch_size: 4, num_workers: 1, save_steps: 1000, max_failures: 0,
     validation: {fraction: 0.25, every_steps: 2}}
tune:
  method: sft
  metric: eval_loss
  num_samples: 3
  max_concurrent_trials: 2
  search: random
  scheduler: {kind: fifo}
  space:
    learning_rate: [1.0e-3, 1.0e+20]   # 1e20 turns the loss NaN at step 2
    adapter.rank: [4, 8]
  seed: 1   # the sampler then draws 1e20, 1e-3, 1e20
"""


@pytest.mark.slow
def test_tune_command_stops_a_diverging_trial_and_writes_a_runnable_best_spec(in_repo, tmp_path):
    import json
    import subprocess
    import sys

    from orchestrator.spec import load_spec

    spec = tmp_path / "tune.yaml"
    spec.write_text(TUNE_SPEC)
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "tune", str(spec), "--artifacts", str(tmp_path / "a")],
                          cwd=in_repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run_dir = next((tmp_path / "a" / "tune-e2e").iterdir())
    summary = json.loads((run_dir / "tune" / "summary.json").read_text())
    rows = (run_dir / "tune" / "trials.csv").read_text().splitlines()
    assert summary["trials"] == 3 and len(rows) == 4
    diverged = [r for r in rows[1:] if ",diverged," in r]
    assert diverged and all("1e+20" in r and "non-finite" in r for r in diverged), rows
    assert summary["states"].get("done", 0) >= 1
    # A diverged trial stops at its first bad step, well before max_steps.
    assert all(int(r.split(",")[-3]) < 6 for r in diverged), rows
    best = load_spec(run_dir / "tune" / "best_spec.yaml")  # a plain, runnable experiment spec
    assert best.tune is None and best.methods[0].options["learning_rate"] == 1e-3
    done = [r for r in rows[1:] if ",done," in r]
    assert done and all(int(r.split(",")[-3]) == 6 for r in done), rows  # steps run, counted by the trial
    # The held-out loss was the metric: every trial's results carry it from its first report on.
    progress = list((run_dir / "ray_tune" / "search").glob("*/progress.csv"))
    assert len(progress) == 3 and all("eval_loss" in p.read_text().splitlines()[0].split(",") for p in progress)
    assert (run_dir / "plots" / "tune_lr.png").stat().st_size > 0
    assert list((run_dir / "ray_tune" / "search").glob("*/events.out.tfevents*")), "TensorBoard logs kept"
