"""Reports and ``compare`` on run directories: intervals, paired differences against the base model,
forgetting, and a refusal to compare runs over different records."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator import cli, driver
from orchestrator.manifest import Manifest
from orchestrator.plan import PlannedJob
from orchestrator.report import render_report
from orchestrator.spec import dump_spec, parse_spec

SPEC = {
    "name": "study", "seeds": [0, 1],
    "datasets": [{"name": "migrations"}, {"name": "humaneval"}],
    "methods": [{"name": "base", "kind": "prompt"}, {"name": "sft", "kind": "sft"}],
}


def make_run(root: Path, run_id: str, passed: dict[str, list[int]], ids: dict[str, list[str]] | None = None) -> Path:
    """A finished run: ``passed[job_id]`` is each record's outcome."""
    run_dir = root / "study" / run_id
    (run_dir / "predictions").mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(dump_spec(parse_spec(SPEC)))  # as a run writes it
    manifest = Manifest.create(run_dir, run_id, "study", list(passed))
    for job_id, outcome in passed.items():
        dataset = job_id.split("__")[1]
        names = (ids or {}).get(dataset) or [f"{dataset}-{i}" for i in range(len(outcome))]
        rows = [{"id": i, "passed": float(p), "syntax_ok": 1.0, "exec_ok": 1.0, "exact_match": float(p),
                 "api_ok": None if dataset == "humaneval" else float(p)} for i, p in zip(names, outcome)]
        (run_dir / "predictions" / f"{job_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        n = len(outcome)
        driver.update_metrics(run_dir, job_id, {"n": n, "answered": n, "pass@1": sum(outcome) / n})
        manifest.update(job_id, "done", timings={"predict_s": 10.0, "eval_s": 1.0})
    return run_dir


BASE_MIG = [1] * 20 + [0] * 80
GAIN_MIG = [1] * 50 + [0] * 50  # +30 points, on the same records
BASE_HE = [1] * 60 + [0] * 40
FORGOT_HE = [1] * 30 + [0] * 70  # -30 points on HumanEval: forgetting


def study_run(root: Path, run_id: str = "r1", gain=GAIN_MIG) -> Path:
    return make_run(root, run_id, {
        "base__migrations": BASE_MIG, "base__humaneval": BASE_HE,
        "sft__migrations__s0": gain, "sft__migrations__s1": gain,
        "sft__humaneval__s0": FORGOT_HE, "sft__humaneval__s1": FORGOT_HE,
    })


def test_report_says_better_on_the_update_and_worse_on_humaneval(tmp_path):
    run_dir = study_run(tmp_path)
    text = render_report(run_dir)
    assert "| sft | migrations | done x2 seeds |" in text
    assert "0.500 [" in text  # the rate carries its interval
    assert "| sft | humaneval (forgetting) | -30.0 [" in text
    assert "| sft | migrations | +30.0 [+" in text and "| better | +0.0 [+0.0, +0.0] |" in text  # exec_ok equal
    sentence = next(line for line in text.splitlines() if line.startswith("- **sft**"))
    assert "on migrations better than `base` (+30.0 points" in sentence
    assert "on humaneval (forgetting) worse than `base` (-30.0 points" in sentence
    assert (run_dir / "plots" / "update_vs_forgetting.png").stat().st_size > 1000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["sft"]["migrations"]["per_seed"]) == {"0", "1"}
    assert metrics["sft"]["migrations"]["pass@1"] == 0.5


def test_no_difference_is_reported_as_none_detectable(tmp_path):
    text = render_report(study_run(tmp_path, gain=BASE_MIG))
    assert "on migrations no detectable difference from `base` (+0.0 points" in text


def test_compare_two_runs_over_the_same_records(tmp_path, capsys):
    a = study_run(tmp_path, "a", gain=BASE_MIG)
    b = study_run(tmp_path, "b", gain=GAIN_MIG)
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b), "--out", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert "| sft | migrations | study/b | 100 | 0.500 [" in text
    assert "| sft | migrations | study/b | +30.0 [" in text and "| better |" in text
    assert (out / "compare.png").stat().st_size > 1000
    assert "comparison:" in capsys.readouterr().out


def test_compare_refuses_runs_over_different_records(tmp_path, capsys):
    a = make_run(tmp_path, "a", {"base__migrations": [1, 0, 1]})
    b = make_run(tmp_path, "b", {"base__migrations": [1, 0, 1]}, ids={"migrations": ["x", "y", "z"]})
    assert cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "dataset 'migrations' was scored on different records" in err and "0 shared" in err
    assert not (tmp_path / "cmp" / "compare.md").exists()


def test_compare_needs_two_runs_and_run_directories(tmp_path, capsys):
    a = make_run(tmp_path, "a", {"base__migrations": [1]})
    assert cli.main(["compare", str(a), "--out", str(tmp_path / "c")]) == 2
    assert cli.main(["compare", str(a), str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_training_group_runs_one_job_at_a_time():
    spec = parse_spec(SPEC)
    m = spec.methods[1]
    jobs = {jid: PlannedJob(jid, m, spec.datasets[0], 0, group) for jid, group in
            [("sft__migrations", "sft"), ("sft__humaneval", "sft"), ("other__migrations", None)]}
    queue = ["sft__humaneval", "other__migrations"]
    assert driver._next_job(queue, jobs, ["sft__migrations"]).id == "other__migrations"
    assert queue == ["sft__humaneval"]
    assert driver._next_job(queue, jobs, ["sft__migrations"]) is None
    assert driver._next_job(queue, jobs, []).id == "sft__humaneval"
