"""The eval job: a method predicts code for a dataset's records, and each prediction is executed.

Entry point: :func:`run_eval_job`. A method may return one code per record or
several samples. Metrics are fractions over the records the method answered
(``n``), each record weighing the same (its samples averaged):

- ``syntax_ok``: the code parses; ``exec_ok``: its code part (imports,
  definitions) ran; ``pass@1``: every test of the record passed;
- ``pass@k`` (k > 1, where a record has at least k samples): the unbiased
  estimator 1 - C(n-c, k) / C(n, k) of Chen et al. (2021), n samples, c correct;
- ``exact_match`` / ``edit_sim`` against the reference;
- ``api_ok``: the code calls the update's new API and not the deprecated one
  (only where that can be decided statically, see ``jobs.evaluation.api_check``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from math import comb
from typing import Any, Callable, Sequence

from data.records import TaskRecord
from jobs.evaluation import metrics
from jobs.methods.registry import MethodContext, method_module
from jobs.sandbox.executor import ExecResult, Executor, Program

METRICS = ("syntax_ok", "exec_ok", "pass@1", "exact_match", "edit_sim", "api_ok")


@dataclass(frozen=True)
class EvalSettings:
    timeout_s: float = 10.0
    with_update: bool = True  # CodeUpdateArena: install the simulated update before the solution
    k: tuple[int, ...] = (1,)  # pass@k values to report where enough samples exist
    python_substitution: bool = True  # per-problem envs: use this Python when the requested one is missing


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
    files: dict[str, str] = field(default_factory=dict)  # the method's artifacts (see MethodOutput.files)
    diverged: str | None = None  # see MethodOutput.diverged


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for n samples of which c are correct (needs n >= k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _samples(code: str | Sequence[str] | None) -> list[str]:
    if code is None:
        return []
    return [code] if isinstance(code, str) else list(code)


def _mean(values: list) -> float | None:
    known = [float(v) for v in values if v is not None]
    return sum(known) / len(known) if known else None


def prepare_environments(records: list[TaskRecord], settings: EvalSettings) -> dict[str, Any]:
    """Build (or find cached) the per-problem environments records need: ``{record id: EnvResult}``."""
    needy = [r for r in records if r.env.requirements or r.env.python]
    if not needy:
        return {}
    from jobs.sandbox.environments import build_envs, spec_for

    specs = {r.id: spec_for(r, allow_python_substitution=settings.python_substitution) for r in needy}
    built = build_envs(specs.values())
    return {rid: built[spec.key] for rid, spec in specs.items()}


def evaluate(
    records: list[TaskRecord],
    codes: list[str | Sequence[str] | None],
    executor: Executor,
    settings: EvalSettings,
    progress: Callable[[int], None] | None = None,
    environments: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Execute every (record, sample, test) program in one batch and fold the verdicts per record.

    Records whose environment could not be built are not executed: their row says
    ``unsupported`` and why, and they count in no metric but ``unsupported``.
    """
    from jobs.evaluation.api_check import check_api

    environments = environments or {}
    batch: list[Program] = []
    owners: list[tuple[int, int]] = []
    for i, (rec, code) in enumerate(zip(records, codes)):
        env = environments.get(rec.id)
        if env is not None and not env.ready:
            continue
        for s, sample in enumerate(_samples(code)):
            prefix = rec.code_for(sample, with_update=settings.with_update)
            for test in rec.tests:
                batch.append(Program(prefix, test, env.python_path if env is not None else None))
                owners.append((i, s))
    kwargs = {"progress": progress} if progress else {}
    results = executor.run(batch, settings.timeout_s, **kwargs) if batch else []
    runs: dict[tuple[int, int], list[ExecResult]] = {}
    for owner, res in zip(owners, results):
        runs.setdefault(owner, []).append(res)

    rows = []
    for i, (rec, code) in enumerate(zip(records, codes)):
        samples = _samples(code)
        row: dict[str, Any] = {"id": rec.id, "code": samples[0] if samples else None}
        env = environments.get(rec.id)
        if env is not None and not env.ready:
            row.update(unsupported=env.reason or "environment unavailable")
        elif samples:
            per = [_sample_verdict(rec, sample, runs.get((i, s), []), check_api) for s, sample in enumerate(samples)]
            passed = [p["passed"] for p in per]
            known = [p for p in passed if p is not None]
            first_failure = next((p["failure"] for p in per if p["failure"]), None)
            row.update(
                samples=len(samples),
                samples_passed=sum(known) if known else None,
                tests_passed=per[0]["tests_passed"],
                tests_total=per[0]["tests_total"],
                passed=(sum(known) / len(known)) if known else None,  # fraction of samples passing
                **{key: _mean([p[key] for p in per]) for key in ("syntax_ok", "exec_ok", "exact_match", "edit_sim",
                                                                   "api_ok")},
                failure=first_failure,
            )
        rows.append(row)
    return rows


def _sample_verdict(rec: TaskRecord, sample: str, runs: list[ExecResult], check_api) -> dict[str, Any]:
    failing = next((r for r in runs if not r.passed), None)
    return {
        "syntax_ok": metrics.syntax_ok(sample),
        "exec_ok": any(r.code_ok for r in runs) if runs else None,
        "passed": all(r.passed for r in runs) if runs else None,
        "tests_passed": sum(r.passed for r in runs),
        "tests_total": len(runs),
        "exact_match": metrics.exact_match(sample, rec.reference) if rec.reference is not None else None,
        "edit_sim": metrics.edit_similarity(sample, rec.reference) if rec.reference is not None else None,
        # In a control condition the record's update is not the one installed: no API verdict.
        "api_ok": None if rec.meta.get("control") else check_api(sample, rec.update.new_api, rec.update.old_api).ok,
        "failure": _describe(failing) if failing else None,
    }


def _describe(result: ExecResult) -> str:
    if result.status == "timeout":
        return "timeout"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    detail = lines[-1][:300] if lines else f"exit code {result.returncode}"
    return f"{detail} ({result.note})" if result.note else detail


def summarize(rows: list[dict[str, Any]], k: Sequence[int] = (1,)) -> dict[str, float | int | None]:
    answered = [r for r in rows if r.get("code") is not None and not r.get("unsupported")]
    out: dict[str, float | int | None] = {"n": len(answered)}
    unsupported = sum(1 for r in rows if r.get("unsupported"))
    if unsupported:
        out["unsupported"] = unsupported
    for name in METRICS:
        out[name] = _mean([r.get("passed" if name == "pass@1" else name) for r in answered])
    for kk in sorted(set(k) - {1}):
        eligible = [r for r in answered if r.get("samples_passed") is not None and r["samples"] >= kk]
        out[f"pass@{kk}"] = _mean([pass_at_k(r["samples"], r["samples_passed"], kk) for r in eligible])
    return out


def run_eval_job(
    request: JobRequest,
    records: list[TaskRecord],
    executor: Executor,
    progress: Callable[[int], None] | None = None,
) -> JobResult:
    module = method_module(request.kind)
    options = module.Options.model_validate(request.options)
    t0 = time.monotonic()
    output = module.predict(records, options, replace(request.context, executor=executor))
    t1 = time.monotonic()
    if len(output.codes) != len(records):
        raise RuntimeError(
            f"method '{request.method}' returned {len(output.codes)} predictions for {len(records)} records"
        )
    environments = prepare_environments(records, request.eval)
    rows = evaluate(records, output.codes, executor, request.eval, progress, environments)
    t2 = time.monotonic()
    summary = summarize(rows, request.eval.k)
    if records and records[0].dataset == "codeupdatearena":
        # The paper's names: UPass with the method told about the right update, SPass in the control.
        prefix = "spass" if records[0].meta.get("control") else "upass"
        summary.update({f"{prefix}@{k[5:]}": v for k, v in list(summary.items()) if k.startswith("pass@")})
    if output.train_time_s is not None:
        summary["train_time_s"] = output.train_time_s
    summary.update(output.metrics)
    return JobResult(rows, summary, {"predict_s": t1 - t0, "eval_s": t2 - t1}, dict(output.files),
                     output.diverged)  # eval_s includes env builds
