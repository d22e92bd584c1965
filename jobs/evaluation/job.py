"""The eval job: a method predicts code for a dataset's records, and each prediction is executed.

Entry point: :func:`run_eval_job`. A method may return one code per record or
several samples. Metrics are fractions over EVERY record of the dataset (``n``),
each record weighing the same (its samples averaged). A record the method did
not answer, an answer with no code in it (blank, comments only: see
``metrics.has_code``) and a record whose environment could not be built all
count as failures on every metric; ``answered`` says how many got code.

- ``syntax_ok``: the code parses; ``exec_ok``: its code part (setup, update,
  candidate) ran AND the candidate defines every name the tests call that the
  setup does not (``metrics.names_tests_need``); ``pass@1``: every test passed;
- ``pass@k`` (k > 1): the unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et
  al. (2021), n samples, c correct; an unanswered record counts 0, and if any
  answered record has fewer than k samples pass@k is n/a (``short@k`` says how
  many) rather than computed over the others;
- ``exact_match`` / ``edit_sim`` against the reference (records that have one);
- ``api_ok``: the code calls the update's new API and not the deprecated one;
  whether a record can be decided comes from the record alone, and on a
  decidable record no code or unparsable code is False (rules in the
  ``jobs.evaluation.api_check`` docstring); undecidable is n/a, never a success;
- the likelihood scorecard (``ref_nll``, ``prefers_new``, ``nll_margin``: see
  ``jobs.inference.likelihood``) where the method holds a model, kept per record
  in the rows so the report can pair it against the baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from math import comb
from typing import Any, Callable, Sequence

from data.records import TaskRecord
from jobs.evaluation import metrics
from jobs.evaluation.api_check import record_api_verdict
from jobs.inference.likelihood import SCORES
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


def _samples(code: str | Sequence[str | None] | None) -> list[str | None]:
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
    ``unsupported`` and why, and fails every metric. Samples with no code are not executed either.
    """
    environments = environments or {}
    batch: list[Program] = []
    owners: list[tuple[int, int]] = []
    for i, (rec, code) in enumerate(zip(records, codes)):
        env = environments.get(rec.id)
        if env is not None and not env.ready:
            continue
        for s, sample in enumerate(_samples(code)):
            if not metrics.has_code(sample):
                continue
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
        answered = any(metrics.has_code(s) for s in samples)
        row: dict[str, Any] = {"id": rec.id, "code": samples[0] if samples else None, "answered": answered}
        env = environments.get(rec.id)
        if env is not None and not env.ready:
            row.update(unsupported=env.reason or "environment unavailable")
            samples = []  # not executed: fails like an unanswered record
        need = metrics.names_tests_need(rec.tests, rec.code_for("", with_update=settings.with_update))
        per = [_sample_verdict(rec, sample, runs.get((i, s), []), need) for s, sample in enumerate(samples)]
        if not per:
            per = [_sample_verdict(rec, None, [], need)]
        passed = [p["passed"] for p in per]
        known = [p for p in passed if p is not None]
        row.update(
            samples=len(samples),
            samples_passed=sum(known) if known else None,
            tests_passed=per[0]["tests_passed"],
            tests_total=per[0]["tests_total"],
            passed=(sum(known) / len(known)) if known else None,  # fraction of samples passing
            **{key: _mean([p[key] for p in per]) for key in ("syntax_ok", "exec_ok", "exact_match", "edit_sim",
                                                               "api_ok")},
            failure=row.get("unsupported") or next((p["failure"] for p in per if p["failure"]), None),
        )
        rows.append(row)
    return rows


def _sample_verdict(rec: TaskRecord, sample: str | None, runs: list[ExecResult],
                    need: set[str]) -> dict[str, Any]:
    """One sample's verdicts; a sample with no code (``None``, blank) fails every one that can be decided."""
    # In a control condition the record's update is not the one installed: no API verdict.
    control = bool(rec.meta.get("control"))
    has_ref = rec.reference is not None
    if not metrics.has_code(sample):
        return {"syntax_ok": False, "exec_ok": False, "passed": False, "tests_passed": 0,
                "tests_total": len(rec.tests), "exact_match": False if has_ref else None,
                "edit_sim": 0.0 if has_ref else None,
                "api_ok": None if control else record_api_verdict(rec, sample),
                "failure": "no code in the answer"}
    failing = next((r for r in runs if not r.passed), None)
    code_ok = any(r.code_ok for r in runs) if runs else None
    return {
        "syntax_ok": metrics.syntax_ok(sample),
        # The candidate's code ran and defines what the tests call (setup lines alone running is not enough).
        "exec_ok": None if code_ok is None else (code_ok and metrics.defines(sample, need)),
        "passed": all(r.passed for r in runs) if runs else None,
        "tests_passed": sum(r.passed for r in runs),
        "tests_total": len(runs),
        "exact_match": metrics.exact_match(sample, rec.reference) if has_ref else None,
        "edit_sim": metrics.edit_similarity(sample, rec.reference) if has_ref else None,
        "api_ok": None if control else record_api_verdict(rec, sample),
        "failure": _describe(failing) if failing else None,
    }


def _describe(result: ExecResult) -> str:
    if result.status == "timeout":
        return "timeout"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    detail = lines[-1][:300] if lines else f"exit code {result.returncode}"
    return f"{detail} ({result.note})" if result.note else detail


def summarize(rows: list[dict[str, Any]], k: Sequence[int] = (1,)) -> dict[str, float | int | None]:
    """Every metric over every row (one per record); see the module docstring for what fails and what is n/a."""
    out: dict[str, float | int | None] = {"n": len(rows),
                                          "answered": sum(1 for r in rows if r.get("answered") and
                                                          not r.get("unsupported"))}
    unsupported = sum(1 for r in rows if r.get("unsupported"))
    if unsupported:
        out["unsupported"] = unsupported
    for name in METRICS:
        out[name] = _mean([r.get("passed" if name == "pass@1" else name) for r in rows])
    for name in SCORES:  # the likelihood scorecard, over the records that carry it (decided by the record)
        if any(name in r for r in rows):
            out[name] = _mean([r.get(name) for r in rows])
    for kk in sorted(set(k) - {1}):
        short = [r for r in rows if 0 < r.get("samples", 0) < kk]
        if short:
            out[f"pass@{kk}"], out[f"short@{kk}"] = None, len(short)
            continue
        out[f"pass@{kk}"] = _mean([pass_at_k(r["samples"], r["samples_passed"] or 0, kk) if r.get("samples") else 0.0
                                   for r in rows])
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
    if output.scores is not None:
        if len(output.scores) != len(records):
            raise RuntimeError(f"method '{request.method}' returned {len(output.scores)} scorecards for "
                               f"{len(records)} records")
        for row, scores in zip(rows, output.scores):
            row.update(scores)
    t2 = time.monotonic()
    summary = summarize(rows, request.eval.k)
    if records and records[0].dataset == "codeupdatearena" and output.shows_update:
        # The paper's names: UPass with the method told about the right update, SPass in the control. Only
        # where the prompt carried the update: elsewhere the rate is plain pass@k.
        prefix = "spass" if records[0].meta.get("control") else "upass"
        summary.update({f"{prefix}@{k[5:]}": v for k, v in list(summary.items()) if k.startswith("pass@")})
    if output.train_time_s is not None:
        summary["train_time_s"] = output.train_time_s
    summary.update(output.metrics)
    return JobResult(rows, summary, {"predict_s": t1 - t0, "eval_s": t2 - t1}, dict(output.files),
                     output.diverged)  # eval_s includes env builds
