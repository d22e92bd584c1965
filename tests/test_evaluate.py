"""The eval job on real benchmark records: the oracle passes, removing the update breaks it."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.codeupdatearena import load_codeupdatearena
from data.humaneval import load_humaneval
from jobs.evaluation.job import EvalSettings, JobRequest, evaluate, run_eval_job, summarize
from jobs.methods.registry import MethodContext
from jobs.sandbox.slots import SandboxExecutor


@pytest.fixture(scope="module")
def sandbox():
    with SandboxExecutor(parallelism=2) as ex:
        yield ex


def _request(kind: str, **eval_kw) -> JobRequest:
    return JobRequest("j", kind, kind, {}, "d", EvalSettings(**eval_kw), MethodContext({}, Path(".")))


def test_reference_passes_and_old_api_has_no_answers_on_codeupdatearena(shared_data, sandbox):
    records = load_codeupdatearena(shared_data / "codeupdatearena" / "arena.dev.jsonl", limit=12)
    ref = run_eval_job(_request("reference"), records, sandbox)
    assert ref.metrics["n"] == 12 and ref.metrics["pass@1"] == 1.0 and ref.metrics["exact_match"] == 1.0
    assert all(row["tests_passed"] == row["tests_total"] > 0 for row in ref.rows)
    old = run_eval_job(_request("old_api"), records, sandbox)
    assert old.metrics["n"] == 0 and old.metrics["pass@1"] is None


def test_without_the_update_reference_solutions_fail(shared_data, sandbox):
    records = load_codeupdatearena(shared_data / "codeupdatearena" / "arena.dev.jsonl", limit=12)
    without = run_eval_job(_request("reference", with_update=False), records, sandbox)
    assert without.metrics["pass@1"] < 0.5


def test_wrong_code_scores_low(sandbox):
    records = load_humaneval(limit=3)
    codes = [r.prompt + "    return None\n" for r in records]
    rows = evaluate(records, codes, sandbox, EvalSettings())
    m = summarize(rows)
    assert m["n"] == 3 and m["syntax_ok"] == 1.0 and m["exec_ok"] == 1.0 and m["pass@1"] == 0.0
    assert m["exact_match"] == 0.0 and 0.0 < m["edit_sim"] < 1.0
    assert all(row["failure"] for row in rows)


def test_humaneval_canonical_solutions_all_pass(sandbox):
    records = load_humaneval()
    result = run_eval_job(_request("reference"), records, sandbox)
    assert result.metrics["n"] == 164 and result.metrics["pass@1"] == 1.0, [
        (r["id"], r["failure"]) for r in result.rows if not r["passed"]
    ]


def test_pass_at_k_with_samples(sandbox):
    records = load_humaneval(limit=2)
    good = [r.reference for r in records]
    bad = [r.prompt + "    return None\n" for r in records]
    codes = [[good[0], bad[0], bad[0], good[0]], [bad[1], bad[1], bad[1], bad[1]]]
    rows = evaluate(records, codes, sandbox, EvalSettings(k=(1, 2)))
    m = summarize(rows, k=(1, 2))
    assert rows[0]["samples"] == 4 and rows[0]["samples_passed"] == 2
    assert m["pass@1"] == (0.5 + 0.0) / 2
    assert abs(m["pass@2"] - (1 - 1 / 6) / 2) < 1e-9  # record 0: 1 - C(2,2)/C(4,2); record 1: 0


def test_pass_at_k_estimator():
    from jobs.evaluation.job import pass_at_k

    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert abs(pass_at_k(5, 1, 1) - 0.2) < 1e-12 and abs(pass_at_k(5, 2, 2) - (1 - 3 / 10)) < 1e-12
