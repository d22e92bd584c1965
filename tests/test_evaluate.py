"""The eval job on real benchmark records: the oracle passes, removing the update breaks it."""

from __future__ import annotations

from pathlib import Path

from data.codeupdatearena import load_codeupdatearena
from data.humaneval import load_humaneval
from jobs.evaluate import EvalSettings, JobRequest, evaluate, run_eval_job, summarize
from jobs.executor import SubprocessExecutor
from jobs.registry import MethodContext


def _request(kind: str, **eval_kw) -> JobRequest:
    return JobRequest("j", kind, kind, {}, "d", EvalSettings(parallelism=2, **eval_kw), MethodContext({}, Path(".")))


def test_reference_passes_and_old_api_has_no_answers_on_codeupdatearena(shared_data):
    records = load_codeupdatearena(shared_data / "codeupdatearena" / "arena.dev.jsonl", limit=12)
    ref = run_eval_job(_request("reference"), records)
    assert ref.metrics["n"] == 12 and ref.metrics["pass@1"] == 1.0 and ref.metrics["exact_match"] == 1.0
    assert all(row["tests_passed"] == row["tests_total"] > 0 for row in ref.rows)
    old = run_eval_job(_request("old_api"), records)
    assert old.metrics["n"] == 0 and old.metrics["pass@1"] is None


def test_without_the_update_reference_solutions_fail(shared_data):
    records = load_codeupdatearena(shared_data / "codeupdatearena" / "arena.dev.jsonl", limit=12)
    without = run_eval_job(_request("reference", with_update=False), records)
    assert without.metrics["pass@1"] < 0.5


def test_wrong_code_scores_low():
    records = load_humaneval(limit=3)
    codes = [r.prompt + "    return None\n" for r in records]
    rows = evaluate(records, codes, SubprocessExecutor(2), EvalSettings())
    m = summarize(rows)
    assert m["n"] == 3 and m["syntax_ok"] == 1.0 and m["exec_ok"] == 1.0 and m["pass@1"] == 0.0
    assert m["exact_match"] == 0.0 and 0.0 < m["edit_sim"] < 1.0
    assert all(row["failure"] for row in rows)
