"""End to end through the real CLI and a local Ray: artifacts, report, ls, Ctrl-C and --resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _run_dir(stdout: str) -> Path:
    line = next(line for line in stdout.splitlines() if line.startswith("run directory: "))
    return Path(line.removeprefix("run directory: "))


def test_smoke_run_end_to_end(in_repo, tmp_path):
    """Every method family through the CLI with the tiny model (experiments/smoke.yaml: the plumbing)."""
    artifacts = tmp_path / "artifacts"
    proc = _cli("run", "experiments/smoke.yaml", "--artifacts", str(artifacts), cwd=in_repo)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run_dir = _run_dir(proc.stdout)
    assert run_dir.parent.name == "smoke" and run_dir.parent.parent == artifacts

    for name in ("spec.yaml", "manifest.json", "metrics.json", "model.json", "report.md", "plots/pass_at_1.png"):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {j["state"] for j in manifest["jobs"].values()} == {"done"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ref, old = metrics["reference"]["migrations"], metrics["old-api"]["migrations"]
    for key in ("n", "syntax_ok", "exec_ok", "pass@1", "exact_match", "edit_sim"):
        assert key in ref and key in old
    assert ref["n"] >= 40 and ref["pass@1"] == 1.0
    assert old["pass@1"] <= 0.1, "old-API code must fail under the installed versions"
    rows = [json.loads(line) for line in (run_dir / "predictions" / "reference__migrations.jsonl").open()]
    assert len(rows) == ref["n"] and all(r["passed"] for r in rows)
    # Every method family ran: rules generalize to held-out variants, trainers report their train time,
    # editors their editing scores.
    assert metrics["rules"]["migrations"]["pass@1"] >= 0.6
    for name in ("sft", "dpo", "grpo", "rome", "memit"):
        assert metrics[name]["migrations"]["train_time_s"] > 0, name
    assert metrics["sft"]["migrations"]["trainable_params"] < metrics["sft"]["migrations"]["total_params"]
    for name in ("rome", "memit"):
        assert 0.0 <= metrics[name]["migrations"]["tf_locality"] <= 1.0
    assert (run_dir / "outputs" / "rules__migrations" / "rules.json").is_file()
    # The results table is what the run prints at the end.
    for name in ("reference", "old-api", "rules", "prompt-basic", "prompt-rules", "sft", "dpo", "grpo", "rome", "memit"):
        assert f"| {name} | migrations | done |" in proc.stdout, name
    assert "## Knowledge editing" in proc.stdout

    (run_dir / "report.md").unlink()
    rep = _cli("report", str(run_dir), cwd=in_repo)
    assert rep.returncode == 0 and (run_dir / "report.md").read_text() == rep.stdout.rstrip("\n") + "\n"
    ls = _cli("ls", "--artifacts", str(artifacts), cwd=in_repo)
    assert str(run_dir) in ls.stdout and "done=10" in ls.stdout


RESUME_SPEC = """\
name: resumable
datasets:
  - {name: he-a, kind: humaneval, limit: 40}
  - {name: he-b, kind: humaneval, limit: 40}
methods:
  - {name: ref-a, kind: reference}
  - {name: ref-b, kind: reference}
resources: {num_workers: 1}
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_then_resume_redoes_only_unfinished_jobs(in_repo, tmp_path, signum):
    """Ctrl-C and SIGTERM (what `ray job stop` and schedulers send) both stop cleanly with 130."""
    spec = tmp_path / "resumable.yaml"
    spec.write_text(RESUME_SPEC)
    artifacts = tmp_path / "artifacts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--artifacts", str(artifacts)],
        cwd=in_repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    manifest_path = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(artifacts.glob("resumable/*/manifest.json"))
        if found:
            manifest_path = found[0]
            states = [j["state"] for j in json.loads(manifest_path.read_text())["jobs"].values()]
            if "done" in states:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read()[-2000:]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err

    run_dir = manifest_path.parent
    before = json.loads(manifest_path.read_text())["jobs"]
    done_before = {jid: job for jid, job in before.items() if job["state"] == "done"}
    assert 1 <= len(done_before) < 4
    assert "running" not in {j["state"] for j in before.values()}, "interrupted jobs go back to pending"

    resumed = _cli("run", "--resume", str(run_dir), cwd=in_repo)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = json.loads(manifest_path.read_text())["jobs"]
    assert {j["state"] for j in after.values()} == {"done"}
    for jid, job in done_before.items():  # untouched: not redone
        assert after[jid]["finished_at"] == job["finished_at"] and after[jid]["attempts"] == job["attempts"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(metrics) == ["ref-a", "ref-b"] and all(sorted(v) == ["he-a", "he-b"] for v in metrics.values())
    assert len(list((run_dir / "predictions").glob("*.jsonl"))) == 4

    again = _cli("run", "--resume", str(run_dir), cwd=in_repo)
    assert again.returncode == 0 and "all jobs already done" in again.stdout


def test_resume_of_a_non_run_directory_is_a_clear_error(in_repo, tmp_path):
    proc = _cli("run", "--resume", str(tmp_path), cwd=in_repo, timeout=60)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_method_outputs_are_written_inside_the_job_directory(tmp_path):
    from orchestrator.driver import write_outputs

    write_outputs(tmp_path / "outputs" / "m__d", {"rules.json": "{}", "sets/train.jsonl": "x\n"})
    assert (tmp_path / "outputs" / "m__d" / "sets" / "train.jsonl").read_text() == "x\n"
    with pytest.raises(ValueError, match="escapes"):
        write_outputs(tmp_path / "outputs" / "m__d", {"../../evil.txt": "x"})
    assert not (tmp_path / "evil.txt").exists()
