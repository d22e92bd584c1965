"""A study through the real CLI on the tiny model (plumbing only): seeds, one training per seed shared by
every dataset, a method restricted to some datasets, forgetting on HumanEval, provenance, and resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SPEC = """\
name: ministudy
model: {name: tiny}
seeds: [0, 1]
datasets:
  - {name: migrations, split: test, limit: 3}
  - {name: humaneval, limit: 2}
methods:
  - {name: reference, kind: reference, datasets: [migrations]}
  - {name: base, kind: prompt, generation: {max_new_tokens: 8}}
  - name: sft
    kind: sft
    train_data: [{kind: migrations, split: train, limit: 4}]
    max_steps: 1
    batch_size: 2
    max_length: 256
    num_workers: 1
    cpus_per_worker: 1
    generation: {max_new_tokens: 8}
eval: {timeout_s: 10}
resources: {num_workers: 2}
"""


def test_seeded_study_trains_once_per_seed_and_reports_forgetting(in_repo, tmp_path):
    spec = tmp_path / "ministudy.yaml"
    spec.write_text(SPEC)
    run = [sys.executable, "-m", "orchestrator", "run"]
    proc = subprocess.run(run + [str(spec), "--artifacts", str(tmp_path / "a")], cwd=in_repo, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run_dir = next((tmp_path / "a" / "ministudy").iterdir())
    jobs = json.loads((run_dir / "manifest.json").read_text())["jobs"]
    assert set(jobs) == {"reference__migrations", "base__migrations", "base__humaneval", "sft__migrations__s0",
                         "sft__migrations__s1", "sft__humaneval__s0", "sft__humaneval__s1"}
    assert {j["state"] for j in jobs.values()} == {"done"}
    assert "started  sft x humaneval (seed 1)" in proc.stdout

    # One training per seed, in the method's shared directory; both datasets' answers came from it.
    for seed in (0, 1):
        assert (run_dir / "work" / f"sft__s{seed}" / "ray" / "final" / "outcome.json").exists()
        assert not (run_dir / "work" / f"sft__migrations__s{seed}" / "ray").exists()
        mig, he = (json.loads((run_dir / "outputs" / f"sft__{ds}__s{seed}" / "training.json").read_text())
                   for ds in ("migrations", "humaneval"))
        assert mig["adapter_dir"] == he["adapter_dir"] and mig["metrics"] == he["metrics"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["sft"]["humaneval"]["per_seed"]) == {"0", "1"}

    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["seeds"] == [0, 1] and prov["packages"]["torch"]
    report = (run_dir / "report.md").read_text()
    assert "## Against the base model (`base`)" in report
    forgetting = report[report.index("### Forgetting"):]
    row = next(line for line in forgetting.splitlines() if line.startswith("| sft | humaneval |"))
    assert row.split(" | ")[2] != "n/a", row  # the scorecard reached the report: Δ ref_nll of the solutions
    assert "- **sft**: on migrations, by pass@1" in report and "forgetting by ref_nll" in report
    assert "| sft | migrations | done x2 seeds |" in report

    again = subprocess.run(run + ["--resume", str(run_dir)], cwd=in_repo, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "all jobs already done" in again.stdout
