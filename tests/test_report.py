"""The report's verdicts by measure: pass@1 where it moves, the likelihood scorecard where it sits at its
floor, forgetting that can fire on a model whose HumanEval pass@1 is 0, and plots grouped by family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from orchestrator import driver
from orchestrator.manifest import Manifest
from orchestrator.outcomes import method_families
from orchestrator.report import render_report
from orchestrator.spec import dump_spec, parse_spec

SPEC = {
    "name": "study", "baseline": "base",
    "datasets": [{"name": "migrations"}, {"name": "humaneval"}],
    "methods": [{"name": "sft", "kind": "sft"}, {"name": "rules", "kind": "rules"},
                {"name": "base", "kind": "prompt"}, {"name": "reference", "kind": "reference"}],
}
N = 40


def make_run(root: Path, rows_by_job: dict[str, list[dict]], spec: dict = SPEC) -> Path:
    run_dir = root / "study" / "r1"
    (run_dir / "predictions").mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(dump_spec(parse_spec(spec)))
    manifest = Manifest.create(run_dir, "r1", "study", list(rows_by_job))
    for job_id, rows in rows_by_job.items():
        (run_dir / "predictions" / f"{job_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"n": len(rows), "answered": len(rows), "pass@1": float(np.mean([r["passed"] for r in rows]))}
        for key in ("ref_nll", "prefers_new"):
            if key in rows[0]:
                summary[key] = float(np.mean([r[key] for r in rows]))
        driver.update_metrics(run_dir, job_id, summary)
        manifest.update(job_id, "done", timings={"predict_s": 1.0, "eval_s": 1.0})
    return run_dir


def rows(dataset: str, passed: list[int], nll: list[float] | None = None, prefers: list[int] | None = None):
    out = []
    for i, p in enumerate(passed):
        row = {"id": f"{dataset}-{i}", "passed": float(p), "syntax_ok": 1.0, "exec_ok": float(p),
               "exact_match": 0.0, "api_ok": None}
        if nll is not None:
            row["ref_nll"] = nll[i]
        if prefers is not None and dataset != "humaneval":
            row["prefers_new"] = float(prefers[i])
        out.append(row)
    return out


def _nll(center: float, seed: int) -> list[float]:
    return list(center + np.random.default_rng(seed).normal(0, 0.05, N))


def study(shift_he: float, shift_mig: float) -> dict[str, list[dict]]:
    """A 135M-like model: HumanEval pass@1 0 for every method; sft moves only the likelihoods."""
    base_mig, base_he = _nll(0.6, 1), _nll(0.4, 2)
    noise = np.random.default_rng(3).normal(0, 0.005, N)
    return {
        "base__migrations": rows("migrations", [0] * N, base_mig, [0] * 30 + [1] * 10),
        "base__humaneval": rows("humaneval", [0] * N, base_he),
        "sft__migrations": rows("migrations", [0] * N, list(np.add(base_mig, shift_mig + noise)), [0] * 10 + [1] * 30),
        "sft__humaneval": rows("humaneval", [0] * N, list(np.add(base_he, shift_he + noise))),
        "rules__migrations": rows("migrations", [1] * 30 + [0] * 10),
        "reference__migrations": rows("migrations", [1] * N),
    }


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_forgetting_fires_by_ref_nll_where_pass_at_1_is_zero(tmp_path):
    text = render_report(make_run(tmp_path, study(shift_he=+0.10, shift_mig=-0.10)))
    forgetting = text[text.index("### Forgetting"):]
    row = _line(forgetting, "| sft | humaneval |")
    assert "worse (beyond margin)" in row and "| +0.100 [+0." in row
    sentence = _line(text, "- **sft**")
    assert "on humaneval, forgetting by ref_nll: worse than `base`" in sentence
    assert "beyond the 0.050-nat margin" in sentence
    assert "by pass@1: no detectable difference" in sentence  # pass@1 at its floor cannot show it
    # On the update dataset the new code became more likely: better by ref_nll, and by prefers_new
    assert "on migrations, by pass@1: no detectable difference" in sentence
    assert "by ref_nll: better than `base`" in sentence
    update = _line(text, "| sft | migrations | +0.0")
    assert "| +50.0 [+" in update  # Δ prefers_new, 10/40 -> 30/40
    assert (tmp_path / "study" / "r1" / "plots" / "update_vs_forgetting.png").stat().st_size > 1000


def test_a_shift_inside_the_margin_is_detectable_but_said_to_be_small(tmp_path):
    text = render_report(make_run(tmp_path, study(shift_he=+0.01, shift_mig=0.0)))
    row = _line(text[text.index("### Forgetting"):], "| sft | humaneval |")
    assert "worse (within margin)" in row
    assert "within the 0.050-nat margin" in _line(text, "- **sft**")


def test_no_shift_states_the_smallest_detectable_one(tmp_path):
    run = study(shift_he=0.0, shift_mig=0.0)
    run["sft__humaneval"] = rows("humaneval", [0] * N, _nll(0.4, 2))  # identical to the base
    sentence = _line(render_report(make_run(tmp_path, run)), "- **sft**")
    assert "no detectable difference from `base` (Δ NLL of the canonical solutions +0.000" in sentence
    assert "undetectable on these 40 records" in sentence


def test_model_free_methods_show_no_scorecard_and_rates_never_claim_certainty(tmp_path):
    text = render_report(make_run(tmp_path, study(0.0, 0.0)))
    header = _line(text, "| method | dataset | state |").split(" | ")
    rules = _line(text, "| rules | migrations |").split(" | ")
    assert rules[header.index("ref_nll")] == "n/a" and rules[header.index("prefers_new")] == "n/a"
    base_he = _line(text, "| base | humaneval |").split(" | ")
    low, high = base_he[header.index("pass@1")].split("[")[1].rstrip("]").split(", ")
    assert float(low) == 0.0 and float(high) > 0.05  # 0/40: a score interval, not [0.00, 0.00]


def test_methods_are_grouped_by_family_in_spec_order(tmp_path):
    run_dir = make_run(tmp_path, study(0.0, 0.0))
    render_report(run_dir)
    families = method_families(run_dir)
    assert list(families) == ["reference", "rules", "base", "sft"]
    assert families["sft"] == "fine-tuning" and families["reference"] == "oracle and floor"
    assert (run_dir / "plots" / "pass_at_1.png").stat().st_size > 1000
