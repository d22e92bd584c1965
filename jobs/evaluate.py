"""The eval job: a method predicts code for a dataset's records, and each prediction is executed.

Entry point: :func:`run_eval_job`. Metrics are fractions over the records the
method answered (``n``): ``syntax_ok``, ``exec_ok`` (the code part ran),
``pass@1`` (every test of the record passed), ``exact_match`` and ``edit_sim``
against the reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from data.records import TaskRecord
from jobs import metrics
from jobs.executor import Executor, Program, SubprocessExecutor
from jobs.registry import MethodContext, method_module

METRICS = ("syntax_ok", "exec_ok", "pass@1", "exact_match", "edit_sim")


@dataclass(frozen=True)
class EvalSettings:
    timeout_s: float = 10.0
    with_update: bool = True  # CodeUpdateArena: install the simulated update before the solution
    parallelism: int = 1


@dataclass(frozen=True)
class JobRequest:
    job_id: str
    method: str  # the method's name in the spec
    kind: str
    options: dict[str, Any]
    dataset: str  # the dataset's name in the spec
    eval: EvalSettings
    context: MethodContext


@dataclass
class JobResult:
    rows: list[dict[str, Any]]
    metrics: dict[str, float | int | None]
    timings: dict[str, float] = field(default_factory=dict)


def evaluate(
    records: list[TaskRecord], codes: list[str | None], executor: Executor, settings: EvalSettings
) -> list[dict[str, Any]]:
    """Execute every (record, test) program in one batch and fold the results per record."""
    batch: list[Program] = []
    owners: list[int] = []
    for i, (rec, code) in enumerate(zip(records, codes)):
        if code is None:
            continue
        prefix = rec.code_for(code, with_update=settings.with_update)
        for test in rec.tests:
            batch.append(Program(prefix, test))
            owners.append(i)
    results = executor.run(batch, settings.timeout_s) if batch else []
    per_record: dict[int, list] = {}
    for i, res in zip(owners, results):
        per_record.setdefault(i, []).append(res)

    rows = []
    for i, (rec, code) in enumerate(zip(records, codes)):
        row: dict[str, Any] = {"id": rec.id, "code": code}
        if code is not None:
            runs = per_record.get(i, [])
            passed = sum(r.passed for r in runs)
            first_failure = next((r for r in runs if not r.passed), None)
            row.update(
                syntax_ok=metrics.syntax_ok(code),
                exec_ok=any(r.code_ok for r in runs) if runs else None,
                passed=(passed == len(runs)) if runs else None,
                tests_passed=passed,
                tests_total=len(runs),
                exact_match=metrics.exact_match(code, rec.reference) if rec.reference is not None else None,
                edit_sim=metrics.edit_similarity(code, rec.reference) if rec.reference is not None else None,
                failure=_describe(first_failure) if first_failure else None,
            )
        rows.append(row)
    return rows


def _describe(result) -> str:
    if result.status == "timeout":
        return "timeout"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit code {result.returncode}"


def summarize(rows: list[dict[str, Any]]) -> dict[str, float | int | None]:
    answered = [r for r in rows if r.get("code") is not None]
    out: dict[str, float | int | None] = {"n": len(answered)}
    for name in METRICS:
        key = "passed" if name == "pass@1" else name
        values = [float(r[key]) for r in answered if r.get(key) is not None]
        out[name] = sum(values) / len(values) if values else None
    return out


def run_eval_job(request: JobRequest, records: list[TaskRecord], executor: Executor | None = None) -> JobResult:
    module = method_module(request.kind)
    options = module.Options.model_validate(request.options)
    t0 = time.monotonic()
    output = module.predict(records, options, request.context)
    t1 = time.monotonic()
    if len(output.codes) != len(records):
        raise RuntimeError(
            f"method '{request.method}' returned {len(output.codes)} predictions for {len(records)} records"
        )
    executor = executor or SubprocessExecutor(request.eval.parallelism)
    rows = evaluate(records, output.codes, executor, request.eval)
    t2 = time.monotonic()
    summary = summarize(rows)
    if output.train_time_s is not None:
        summary["train_time_s"] = output.train_time_s
    summary.update(output.metrics)
    return JobResult(rows, summary, {"predict_s": t1 - t0, "eval_s": t2 - t1})
