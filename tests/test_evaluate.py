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
    # No pre-update code: every record is unanswered, and every one counts as a failure.
    assert old.metrics["n"] == 12 and old.metrics["answered"] == 0 and old.metrics["pass@1"] == 0.0
    assert old.metrics["syntax_ok"] == old.metrics["exec_ok"] == old.metrics["exact_match"] == 0.0


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


# --- honest metrics: nothing scores like something ------------------------------------------


@pytest.fixture(scope="module")
def migration_records():
    from data.migrations import load_migrations

    return load_migrations(split="test")[:3]


@pytest.mark.parametrize("blank", [None, "", "\n  \n", "# just a comment\n"])
def test_a_blank_answer_fails_every_metric(migration_records, sandbox, blank):
    answer = None if blank is None else [blank, blank]  # two samples, so pass@2 is defined
    rows = evaluate(migration_records, [answer] * len(migration_records), sandbox, EvalSettings(k=(1, 2)))
    m = summarize(rows, k=(1, 2))
    assert m["n"] == len(migration_records) and m["answered"] == 0
    for name in ("syntax_ok", "exec_ok", "pass@1", "pass@2", "exact_match", "edit_sim", "api_ok"):
        assert m[name] == 0.0, (name, m[name])
    assert all(r["failure"] == "no code in the answer" for r in rows)


def test_every_record_is_in_the_denominator(migration_records, sandbox):
    codes = [migration_records[0].reference] + [None] * (len(migration_records) - 1)
    m = summarize(evaluate(migration_records, codes, sandbox, EvalSettings()))
    assert m["n"] == 3 and m["answered"] == 1
    assert m["pass@1"] == m["exec_ok"] == m["exact_match"] == pytest.approx(1 / 3)


def test_exec_ok_needs_the_names_the_tests_call(migration_records, sandbox):
    rec = migration_records[0]
    runs_but_defines_nothing = "import pandas as pd\nx = 1\n"
    (row,) = evaluate([rec], [runs_but_defines_nothing], sandbox, EvalSettings())
    assert row["syntax_ok"] == 1.0 and row["exec_ok"] == 0.0 and row["passed"] == 0.0
    (row,) = evaluate([rec], [rec.old_code], sandbox, EvalSettings())
    assert row["exec_ok"] == 1.0  # the old code defines the function; it fails only inside the test


def test_pass_at_k_is_not_computed_over_a_subset(migration_records, sandbox):
    ref = migration_records[0].reference
    codes = [[ref, ref], [ref], None]  # the second record has fewer than k samples
    m = summarize(evaluate(migration_records, codes, sandbox, EvalSettings(k=(1, 2))), k=(1, 2))
    assert m["pass@2"] is None and m["short@2"] == 1
    full = summarize(evaluate(migration_records, [[ref, ref], [ref, None], None], sandbox, EvalSettings()),
                     k=(1, 2))
    assert full["pass@2"] == pytest.approx(1 / 3)  # record 1 passes 1 of 2; pass@2 = 1; record 2 counts 0


def test_upass_only_where_the_prompt_carried_the_update(shared_data, sandbox, monkeypatch):
    from jobs.methods import reference

    records = load_codeupdatearena(shared_data / "codeupdatearena" / "arena.dev.jsonl", limit=2)
    plain = run_eval_job(_request("reference"), records, sandbox)
    assert "pass@1" in plain.metrics and not any(k.startswith(("upass", "spass")) for k in plain.metrics)
    original = reference.predict
    monkeypatch.setattr(reference, "predict", lambda *a: __import__("dataclasses").replace(original(*a),
                                                                                            shows_update=True))
    told = run_eval_job(_request("reference"), records, sandbox)
    assert told.metrics["upass@1"] == told.metrics["pass@1"] == 1.0
