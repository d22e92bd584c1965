"""``sft`` through the real CLI and driver: a diverging learning rate is caught, the other method still finishes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobs.methods.sft import Options

pytestmark = pytest.mark.slow

SPEC = """\
name: diverging
model: {name: tiny}
datasets:
  - {name: migrations, limit: 4}
methods:
  - {name: reference, kind: reference}
  - name: sft-boom
    kind: sft
    learning_rate: 1.0e+20     # Adam moves every adapter weight by ~lr: activations overflow to inf, loss NaN
    warmup_ratio: 0.0
    max_steps: 6
    batch_size: 2
    max_length: 512
    generation: {max_new_tokens: 8}
eval: {timeout_s: 10}
resources: {num_workers: 2}
"""


def test_options_reject_bad_keys():
    with pytest.raises(ValueError):
        Options.model_validate({"adapter": {"rank": 0}})
    with pytest.raises(ValueError):
        Options.model_validate({"lr": 1e-4})
    assert Options.model_validate({"packing": True}).packing


def test_diverging_learning_rate_is_reported_and_the_other_method_finishes(in_repo, tmp_path):
    spec = tmp_path / "diverging.yaml"
    spec.write_text(SPEC)
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(spec), "--artifacts", str(tmp_path / "a")],
                          cwd=in_repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]  # a diverged job is not "all done"
    run_dir = next((tmp_path / "a" / "diverging").iterdir())
    jobs = json.loads((run_dir / "manifest.json").read_text())["jobs"]
    assert jobs["reference__migrations"]["state"] == "done"
    boom = jobs["sft-boom__migrations"]
    assert boom["state"] == "diverged", boom
    assert "non-finite loss (nan) at step" in boom["error"], boom["error"]  # logged as NaN, not 0.0
    step = int(boom["error"].split("at step ")[1].split()[0])
    assert step < 6, "training went on after the divergence"
    assert "DIVERGED sft-boom" in proc.stdout
    training = json.loads((run_dir / "outputs" / "sft-boom__migrations" / "training.json").read_text())
    assert training["diverged"] == boom["error"].removeprefix("diverged: ")
