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


def make_run(root: Path, run_id: str, passed: dict[str, list[int]], ids: dict[str, list[str]] | None = None,
             spec: dict | None = None, prov: dict | None = None) -> Path:
    """A finished run: ``passed[job_id]`` is each record's outcome; ``spec`` overrides top-level spec keys,
    ``prov`` is written as its provenance.json."""
    run_dir = root / "study" / run_id
    (run_dir / "predictions").mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(dump_spec(parse_spec({**SPEC, **(spec or {})})))  # as a run writes it
    if prov is not None:
        (run_dir / "provenance.json").write_text(json.dumps(prov))
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
    assert "| sft | humaneval | n/a | not compared | -30.0 [" in text  # no scorecard: pass@1 beside it
    assert "| sft | migrations | +30.0 [+" in text and "| better | +0.0 [-" in text  # exec_ok equal, never certain
    sentence = next(line for line in text.splitlines() if line.startswith("- **sft**"))
    assert "on migrations, by pass@1: better than `base` (+30.0 points" in sentence
    assert "forgetting by ref_nll: not compared" in sentence
    assert "by pass@1: worse than `base` (-30.0 points" in sentence
    assert (run_dir / "plots" / "update_vs_forgetting.png").stat().st_size > 1000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["sft"]["migrations"]["per_seed"]) == {"0", "1"}
    assert metrics["sft"]["migrations"]["pass@1"] == 0.5


def test_no_difference_is_reported_as_none_detectable(tmp_path):
    text = render_report(study_run(tmp_path, gain=BASE_MIG))
    assert "on migrations, by pass@1: no detectable difference from `base` (+0.0 points" in text


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


# ---------------------------------------------------------------------------------------------- refusals

SHA = {"a": "ab12" * 16, "b": "cd34" * 16, "c": "ef56" * 16}


def prov(**changes) -> dict:
    """A provenance.json as the driver writes it (FORMAT 2), with ``changes`` to its sections."""
    p = {"format": 2, "git": {"commit": "92ef224" + "0" * 33, "dirty": []}, "code_hash": "00aa00aa00aa00aa",
         "code_files": 190, "python": "3.11.7", "packages": {"pandas": "2.2.3", "numpy": "2.1.0"},
         "model": {"name": "smollm2-135m", "path": "/m", "sha256_prefix": None, "sha256": SHA["a"],
                   "weights_source": "/m"},
         "datasets": {"migrations": {"records": 3, "sha256": SHA["a"]}}, "seeds": [0, 1]}
    for key, value in changes.items():
        p[key] = {**p[key], **value} if isinstance(value, dict) and isinstance(p.get(key), dict) else value
    return p


def pair(tmp_path, a: dict, b: dict) -> tuple[Path, Path]:
    """Two runs of the same outcomes on the same records, made with ``a`` and ``b`` (make_run's keywords)."""
    return (make_run(tmp_path, "a", {"base__migrations": [1, 0, 1]}, **a),
            make_run(tmp_path, "b", {"base__migrations": [1, 1, 1]}, **b))


def compare(tmp_path, a: Path, b: Path, *flags: str) -> int:
    return cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp"), *flags])


def test_compare_refuses_runs_with_other_eval_settings(tmp_path, capsys):
    a, b = pair(tmp_path, {}, {"spec": {"eval": {"timeout_s": 30}}})
    assert compare(tmp_path, a, b) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]  # one line
    assert err == "compare: runs differ in eval.timeout_s: study/a 10.0 vs study/b 30.0 (--force compares them anyway)"
    assert not (tmp_path / "cmp" / "compare.md").exists()


def test_compare_force_lists_the_differences_above_the_table(tmp_path, capsys):
    a, b = pair(tmp_path, {}, {"spec": {"eval": {"timeout_s": 30, "with_update": False}}})
    assert compare(tmp_path, a, b, "--force") == 0
    text = (tmp_path / "cmp" / "compare.md").read_text()
    top = text[:text.index("| run |")]
    assert "--force" in top
    assert "- eval.timeout_s: study/a 10.0 vs study/b 30.0" in top
    assert "- eval.with_update: study/a true vs study/b false" in top
    assert "| base | migrations | study/b | 3 |" in text
    out = capsys.readouterr().out
    assert out.index("eval.timeout_s") < out.index("| method | dataset | run |")  # printed above the table


def test_compare_ignores_eval_settings_that_change_no_outcome_and_fills_defaults(tmp_path):
    a, b = pair(tmp_path, {}, {"spec": {"eval": {"pool_size": 3, "timeout_s": 10.0}}})
    spec_a = (a / "spec.yaml").read_text()  # a spec written before a setting existed ran with its default
    (a / "spec.yaml").write_text(spec_a.replace("  python_substitution: true\n", ""))
    assert "python_substitution" not in (a / "spec.yaml").read_text()
    assert compare(tmp_path, a, b) == 0


def test_compare_refuses_runs_over_changed_record_contents(tmp_path, capsys):
    a, b = pair(tmp_path, {"prov": prov()}, {"prov": prov(datasets={"migrations": {"records": 3, "sha256": SHA["b"]}})})
    assert compare(tmp_path, a, b) == 2
    assert (f"compare: runs differ in records of dataset 'migrations': study/a 3 records (sha256 {SHA['a'][:12]}) "
            f"vs study/b 3 records (sha256 {SHA['b'][:12]})") in capsys.readouterr().err
    assert compare(tmp_path, a, b, "--force") == 0
    assert "- records of dataset 'migrations': study/a" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_refuses_another_model_and_other_code(tmp_path, capsys):
    tiny = {"name": "tiny", "sha256": SHA["c"], "weights_source": "tiny recipe"}
    a, b = pair(tmp_path, {"prov": prov()}, {"prov": prov(model=tiny, code_hash="11bb11bb11bb11bb")})
    assert compare(tmp_path, a, b) == 2
    err = capsys.readouterr().err
    assert (f"compare: runs differ in model: study/a smollm2-135m (sha256 {SHA['a'][:12]}) vs study/b tiny "
            f"(sha256 {SHA['c'][:12]}); also in code (--force") in err
    assert compare(tmp_path, a, b, "--force") == 0
    top = (tmp_path / "cmp" / "compare.md").read_text().split("| run |")[0]
    assert "- model: study/a smollm2-135m" in top
    assert "- code: study/a 92ef224 (sources 00aa00aa00aa00aa) vs study/b 92ef224 (sources 11bb11bb11bb11bb)" in top


def test_same_weights_under_another_name_is_the_same_model(tmp_path):
    a, b = pair(tmp_path, {"prov": prov()}, {"prov": prov(model={"name": "/copies/smollm2"})})
    assert compare(tmp_path, a, b) == 0


def test_runs_made_before_complete_provenance_compare_on_what_they_recorded(tmp_path, capsys):
    older = prov(model={"name": "smollm2-135m", "path": "/m", "sha256_prefix": "ab12cd34ef56ab78"})
    for key in ("format", "datasets", "code_files"):
        del older[key]
    del older["model"]["sha256"]
    a, b = pair(tmp_path, {"prov": older}, {"prov": prov()})
    assert compare(tmp_path, a, b) == 0  # the fields both have agree (model name, eval settings)
    text = (tmp_path / "cmp" / "compare.md").read_text()
    notes = text[:text.index("| run |")]
    assert "record contents: no dataset hashes in study/a" in notes
    assert "model weights: no hash in study/a (its provenance predates weights hashes); compared by name" in notes
    assert "code: the code hash of study/a covers *.py only" in notes
    # two older runs: their code hashes (same scope) and model names still count
    c = make_run(tmp_path, "c", {"base__migrations": [0, 0, 1]}, prov={**older, "code_hash": "22cc22cc22cc22cc"})
    assert compare(tmp_path, a, c) == 2
    assert "runs differ in code: study/a 92ef224 (sources 00aa00aa00aa00aa) vs study/c" in capsys.readouterr().err


def test_runs_without_provenance_are_checked_on_their_spec_and_model(tmp_path, capsys):
    a, b = pair(tmp_path, {}, {"spec": {"model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}}})
    assert compare(tmp_path, a, b) == 2
    err = capsys.readouterr().err
    assert "compare: runs differ in model: study/a tiny vs study/b HuggingFaceTB/SmolLM2-135M-Instruct" in err
