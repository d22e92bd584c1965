"""A wrong spec exits with code 2 and one line naming the field and the problem, before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator import cli
from orchestrator.spec import load_spec

GOOD = """\
name: t
datasets:
  - {name: migrations}
methods:
  - {name: reference, kind: reference}
"""

# (spec text, substrings the one-line error must contain)
BAD_SPECS = {
    "yaml-syntax": ("name: t\ndatasets: [\n", ["invalid YAML", "line"]),
    "not-a-mapping": ("- just\n- a list\n", ["expected a mapping"]),
    "missing-name": ("datasets: [{name: migrations}]\nmethods: [{name: r, kind: reference}]\n", ["name", "required"]),
    "bad-name-chars": (GOOD.replace("name: t", "name: 'a/b'"), ["name", "pattern"]),
    "unknown-top-field": (GOOD + "epochs: 3\n", ["epochs", "unknown field"]),
    "unknown-baseline": (GOOD + "baseline: nope\n", ["baseline", "no method named 'nope'"]),
    "method-on-unknown-dataset": (GOOD.replace("kind: reference}", "kind: reference, datasets: [foo]}"),
                                  ["methods[0].datasets", "no dataset named 'foo'"]),
    "duplicate-seeds": (GOOD + "seeds: [1, 1]\n", ["seeds", "once"]),
    "no-datasets": ("name: t\ndatasets: []\nmethods: [{name: r, kind: reference}]\n", ["datasets", "at least 1"]),
    "no-methods": ("name: t\ndatasets: [{name: migrations}]\nmethods: []\n", ["methods", "at least 1"]),
    "unknown-method-kind": (GOOD.replace("kind: reference", "kind: magic"), ["methods[0].kind", "magic"]),
    "method-without-kind": (GOOD.replace(", kind: reference", ""), ["methods[0]", "kind", "required"]),
    "unknown-method-option": (GOOD.replace("kind: reference}", "kind: reference, lr: 0.1}"), ["methods[0].lr", "unknown field"]),
    "unknown-dataset-kind": (GOOD.replace("{name: migrations}", "{name: foo}"), ["datasets[0].kind", "foo"]),
    "missing-dataset-file": (
        GOOD.replace("{name: migrations}", "{name: c, kind: codeupdatearena, path: /nonexistent/a.jsonl}"),
        ["datasets[0].path", "not found", "/nonexistent/a.jsonl"],
    ),
    "recode-without-path": (GOOD.replace("{name: migrations}", "{name: r, kind: recode}"), ["datasets[0].path", "needs a path"]),
    "limit-not-int": (GOOD.replace("{name: migrations}", "{name: migrations, limit: many}"), ["datasets[0].limit"]),
    "limit-negative": (GOOD.replace("{name: migrations}", "{name: migrations, limit: -3}"), ["datasets[0].limit"]),
    "timeout-wrong-type": (GOOD + "eval: {timeout_s: soon}\n", ["eval.timeout_s"]),
    "timeout-zero": (GOOD + "eval: {timeout_s: 0}\n", ["eval.timeout_s", "greater than 0"]),
    "workers-zero": (GOOD + "resources: {num_workers: 0}\n", ["resources.num_workers"]),
    "use-gpu-not-bool": (GOOD + "resources: {use_gpu: maybe}\n", ["resources.use_gpu"]),
    "duplicate-method": (GOOD + "  - {name: reference, kind: old_api}\n", ["methods[1].name", "duplicate"]),
    "duplicate-dataset": (
        GOOD.replace("  - {name: migrations}\n", "  - {name: migrations}\n  - {name: migrations}\n"),
        ["datasets[1].name", "duplicate"],
    ),
    "model-dtype": (GOOD + "model: {name: tiny, dtype: float8}\n", ["model.dtype"]),
    "control-on-wrong-kind": (GOOD.replace("{name: migrations}", "{name: migrations, control: random_update}"),
                              ["datasets[0].control", "only codeupdatearena"]),
    "split-on-wrong-kind": (GOOD.replace("{name: migrations}", "{name: h, kind: humaneval, split: test}"),
                            ["datasets[0].split", "only the built-in migrations"]),
    "split-unknown": (GOOD.replace("{name: migrations}", "{name: migrations, split: dev}"), ["datasets[0].split"]),
    "double-underscore-name": (GOOD.replace("{name: reference,", "{name: a__b,"), ["methods[0].name", "pattern"]),
    "timeout-infinite": (GOOD + "eval: {timeout_s: .inf}\n", ["eval.timeout_s"]),
    "memory-absurd": (GOOD + "eval: {memory_mb: 99999999999999}\n", ["eval.memory_mb"]),
    "impossible-date": (GOOD + "seed: 2001-02-30\n", ["invalid YAML value"]),
    "datasets-not-list": ("name: t\ndatasets: migrations\nmethods: [{name: r, kind: reference}]\n", ["datasets"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_one_line_exit_2(case, tmp_path, capsys):
    text, needles = BAD_SPECS[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    artifacts = tmp_path / "artifacts"
    code = cli.main(["run", str(spec), "--artifacts", str(artifacts)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not artifacts.exists(), "a bad spec must not create a run"


def test_missing_spec_file(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "spec file not found" in capsys.readouterr().err


def test_good_spec_parses_into_typed_objects(tmp_path):
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(GOOD)
    spec = load_spec(spec_path)
    assert spec.datasets[0].kind == "migrations"  # kind defaults to the name
    assert spec.methods[0].options == {}
    assert spec.eval.timeout_s == 10.0 and spec.resources.num_workers == 2


def test_cli_bad_spec_from_shell(tmp_path, in_repo):
    """The real entry point, as a user runs it: exit code 2, one line on stderr."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(BAD_SPECS["unknown-method-kind"][0])
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown method kind 'magic'" in proc.stderr


def test_run_needs_spec_or_resume(capsys):
    assert cli.main(["run"]) == 2
    assert "exactly one" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quickstart", "smoke", "study", "codeupdatearena", "gitchameleon",
                                  "tune_quickstart"])
def test_shipped_experiments_validate(in_repo, shared_data, name):
    spec = load_spec(in_repo / "experiments" / f"{name}.yaml")
    assert spec.name


def test_study_covers_every_family_trains_on_train_splits_and_measures_forgetting(in_repo, shared_data):
    from orchestrator.plan import plan_jobs

    spec = load_spec(in_repo / "experiments" / "study.yaml")
    kinds = {m.kind for m in spec.methods}
    assert {"reference", "old_api", "rules", "prompt", "sft", "dpo", "grpo", "edit"} <= kinds
    assert {m.options["algorithm"] for m in spec.methods if m.kind == "edit"} == {"rome", "memit", "unlearn"}
    assert len(spec.run_seeds) >= 2 and spec.baseline == "prompt-basic"
    assert "humaneval" in {d.kind for d in spec.datasets}
    for m in spec.methods:
        sources = m.options.get("train_data", m.options.get("edit_data"))
        if m.kind in ("sft", "dpo", "grpo", "edit"):
            assert sources and all(s.get("split") == "train" for s in sources), m.name
    jobs = plan_jobs(spec)
    assert all(j.group for j in jobs if j.method.kind in ("sft", "dpo", "grpo"))  # one training per seed
