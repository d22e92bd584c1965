"""The Ray driver: runs an experiment's jobs as Ray tasks and records everything in the run directory.

A run lives in ``<artifacts>/<experiment>/<run-id>/``. The driver is the only
writer of that directory (tasks return their results), so it works the same
on a laptop and on a cluster whose workers share no filesystem with it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Callable

from data.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from data.registry import load_dataset
from jobs.evaluate import EvalSettings, JobRequest, JobResult, run_eval_job
from jobs.pool import SandboxPool
from jobs.registry import MethodContext
from jobs.sandbox import Limits
from orchestrator.manifest import Manifest
from orchestrator.plan import PlannedJob, plan_jobs
from orchestrator.spec import ExperimentSpec, dump_spec, load_spec

DEFAULT_ARTIFACTS = "artifacts"
ARTIFACTS_ENV = "APIMIG_ARTIFACTS"
STATUS_EVERY_S = 15.0


class DataError(RuntimeError):
    """A dataset named by the spec could not be loaded (bad record, unreadable file)."""


def artifacts_root(override: str | None = None) -> Path:
    return Path(override or os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)


def create_run(spec: ExperimentSpec, root: Path) -> Path:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    run_dir = root / spec.name / run_id
    run_dir.mkdir(parents=True)
    atomic_write_text(run_dir / "spec.yaml", dump_spec(spec))
    Manifest.create(run_dir, run_id, spec.name, [job.id for job in plan_jobs(spec)])
    return run_dir


def open_run(run_dir: Path) -> tuple[ExperimentSpec, Manifest]:
    """Reload a run for ``--resume``: its own spec copy, its manifest."""
    spec = load_spec(run_dir / "spec.yaml")
    manifest = Manifest.load(run_dir)
    manifest.ensure_jobs([job.id for job in plan_jobs(spec)])
    return spec, manifest


def start_ray(spec: ExperimentSpec, address: str | None) -> None:
    """Join a cluster (``--address`` or ``RAY_ADDRESS``) or start a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": logging.WARNING, "namespace": "apimig"}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=spec.resources.num_cpus, **kwargs)


def _load_records(spec: ExperimentSpec) -> dict[str, list]:
    out = {}
    for ds in spec.datasets:
        try:
            out[ds.name] = load_dataset(ds.kind, ds.path, ds.limit, ds.control, ds.split)
        except (OSError, ValueError) as exc:
            raise DataError(f"datasets '{ds.name}': {exc}") from None
    return out


def run_experiment(
    spec: ExperimentSpec,
    run_dir: Path,
    manifest: Manifest,
    address: str | None = None,
    echo: Callable[[str], None] = print,
) -> Manifest:
    """Run every job of ``manifest`` that is not done. Ctrl-C leaves unfinished jobs pending."""
    import ray

    jobs = {job.id: job for job in plan_jobs(spec)}
    todo = [jid for jid in manifest.pending() if jid in jobs]
    records = _load_records(spec)  # fail on bad data before any work starts
    total, finished = len(jobs), len(jobs) - len(todo)
    if not todo:
        echo("all jobs already done")
        return manifest

    start_ray(spec, address)
    pool = SandboxPool.start(
        size=spec.eval.pool_size, preload=spec.eval.preload, limits=Limits(memory_mb=spec.eval.memory_mb),
        name=f"sandbox-{run_dir.name}",
    )
    record_refs = {name: ray.put(recs) for name, recs in records.items()}
    eval_task = ray.remote(num_cpus=1, max_retries=0)(_eval_task)
    queue = list(todo)
    running: dict = {}  # ObjectRef -> job id
    started_at: dict[str, float] = {}
    last_status = time.monotonic()
    try:
        while queue or running:
            while queue and len(running) < spec.resources.num_workers:
                job = jobs[queue.pop(0)]
                request = _request(spec, job, run_dir)
                ref = eval_task.options(name=f"eval {job.method.name} x {job.dataset.name}").remote(
                    request, record_refs[job.dataset.name], pool
                )
                running[ref] = job.id
                started_at[job.id] = time.monotonic()
                manifest.update(job.id, "running")
                echo(f"[{finished}/{total}] started  {job.method.name} x {job.dataset.name}")
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                jid = running.pop(ref)
                finished += 1
                _finish(ref, jobs[jid], run_dir, manifest, echo, f"[{finished}/{total}]")
            if running and time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                busy = ", ".join(f"{jid} {last_status - started_at[jid]:.0f}s" for jid in running.values())
                done = sum(s["done"] for s in pool.stats())
                echo(f"[{finished}/{total}] running: {busy}; programs executed: {done}")
    finally:  # Ctrl-C or any error: nothing stays "running", nothing keeps computing
        for ref, jid in running.items():
            ray.cancel(ref, force=True)
            manifest.update(jid, "pending", interrupted=True)
        pool.close()
    return manifest


def _eval_task(request: JobRequest, records: list, pool: SandboxPool) -> JobResult:
    return run_eval_job(request, records, pool)


def _request(spec: ExperimentSpec, job: PlannedJob, run_dir: Path) -> JobRequest:
    return JobRequest(
        job_id=job.id,
        method=job.method.name,
        kind=job.method.kind,
        options=job.method.options,
        dataset=job.dataset.name,
        eval=EvalSettings(
            timeout_s=spec.eval.timeout_s, with_update=spec.eval.with_update, k=tuple(spec.eval.k),
            python_substitution=spec.eval.python_substitution,
        ),
        context=MethodContext(
            model=spec.model.model_dump(), work_dir=run_dir / "work" / job.id, seed=spec.seed,
            use_gpu=spec.resources.use_gpu,
        ),
    )


def _finish(ref, job: PlannedJob, run_dir: Path, manifest: Manifest, echo, counter: str) -> None:
    import ray

    try:
        result: JobResult = ray.get(ref)
    except Exception as exc:  # the job's own error, re-raised by Ray
        cause = getattr(exc, "cause", None) or exc
        message = f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
        manifest.update(job.id, "failed", error=message)
        echo(f"{counter} FAILED   {job.method.name} x {job.dataset.name}: {message}")
        return
    try:
        write_outputs(run_dir / "outputs" / job.id, result.files)
    except ValueError as exc:
        manifest.update(job.id, "failed", error=str(exc))
        echo(f"{counter} FAILED   {job.method.name} x {job.dataset.name}: {exc}")
        return
    atomic_write_jsonl(run_dir / "predictions" / f"{job.id}.jsonl", result.rows)
    update_metrics(run_dir, job.method.name, job.dataset.name, result.metrics)
    timings = {k: round(v, 3) for k, v in result.timings.items()}
    if result.diverged:
        manifest.update(job.id, "diverged", timings=timings, error=f"diverged: {result.diverged}")
        echo(f"{counter} DIVERGED {job.method.name} x {job.dataset.name}: {result.diverged}")
        return
    manifest.update(job.id, "done", timings=timings)
    p = result.metrics.get("pass@1")
    shown = f"pass@1={p:.3f}" if p is not None else "pass@1=n/a"
    echo(f"{counter} done     {job.method.name} x {job.dataset.name}  {shown}  n={result.metrics['n']}")


def write_outputs(out_dir: Path, files: dict[str, str]) -> None:
    """A method's artifacts, each written atomically; names may not leave ``out_dir``."""
    root = out_dir.resolve()
    for rel, text in files.items():
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"method artifact path escapes its directory: {rel!r}")
        atomic_write_text(target, text)


def update_metrics(run_dir: Path, method: str, dataset: str, values: dict) -> None:
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics.setdefault(method, {})[dataset] = values
    atomic_write_json(path, metrics)
