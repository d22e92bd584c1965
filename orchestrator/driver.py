"""The Ray driver: runs an experiment's jobs as Ray tasks and records everything in the run directory.

A run lives in ``<artifacts>/<experiment>/<run-id>/``. The driver is the only
writer of that directory (tasks return their results), so it works the same
on a laptop and on a cluster whose workers share no filesystem with it.

``<artifacts>`` may be a URI; see ``orchestrator.storage``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from data.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from data.registry import load_dataset
from jobs import telemetry
from jobs.evaluation.job import EvalSettings, JobRequest, JobResult, run_eval_job
from jobs.methods.registry import MethodContext, gpus_for, runs_model_in_task
from jobs.sandbox.pool import SandboxPool
from jobs.sandbox.slots import Limits
from orchestrator import provenance
from orchestrator.manifest import Manifest
from orchestrator.plan import PlannedJob, plan_jobs, run_order, split_job_id
from orchestrator.spec import ExperimentSpec
from orchestrator.storage import RunMirror

STATUS_EVERY_S = 15.0


class DataError(RuntimeError):
    """A dataset named by the spec could not be loaded (bad record, unreadable file)."""


def start_ray(spec: ExperimentSpec, address: str | None, run_id: str = "") -> bool:
    """Join a cluster (``--address`` or ``RAY_ADDRESS``) or start a local Ray instance.

    Returns whether this call connected (False when the caller had already initialised Ray).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # The dashboard's Jobs page shows these; a submitted job keeps the name given to `ray job submit`.
    metadata = {"job_name": f"apimig {spec.name} {run_id}".strip(), "apimig_experiment": spec.name,
                "apimig_run": run_id}
    kwargs = {"logging_level": logging.WARNING, "namespace": "apimig",
              "job_config": ray.job_config.JobConfig(metadata=metadata)}
    # ray.init makes SIGTERM a bare exit; the caller's handler (the CLI: stop like Ctrl-C, so jobs go back
    # to pending and the resume hint is printed) must survive it.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=spec.resources.num_cpus, **kwargs)
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    return True


def _record_model(spec: ExperimentSpec, run_dir: Path, echo: Callable[[str], None]) -> None:
    """Write ``model.json``: the resolved model (directory, GGUF hash) and the prompt format it is asked in.

    Resolving also builds or converts the model once, here, before tasks and workers race to do it.
    A model that cannot be resolved on the driver (a hub id offline) is recorded as such: the jobs that
    need it fail on their own, the others run.
    """
    from jobs.inference.models import describe_model

    target = run_dir / "model.json"
    if target.exists():
        return
    try:
        info = describe_model(spec.model.model_dump())
        echo(f"model: {spec.model.name} ({info['prompt_format']} prompts) at {info['path']}")
    except (OSError, ValueError) as exc:
        info = {"spec": spec.model.model_dump(), "error": str(exc).splitlines()[0]}
        echo(f"model: {spec.model.name} not resolved on the driver: {info['error']}")
    atomic_write_json(target, info)


def _record_provenance(spec: ExperimentSpec, run_dir: Path, echo: Callable[[str], None],
                       records: dict[str, list] | None = None) -> None:
    """Write ``provenance.json`` (code, versions, model weights and dataset records hashes, seeds) once; on a
    resume, say what changed since, because the finished jobs' numbers came from what it recorded.
    ``records``: every dataset's records as the run evaluates them (``_load_records``)."""
    model_info = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    current = provenance.collect(spec.run_seeds, model_info, records=records)
    recorded = provenance.load(run_dir)
    if recorded is None:
        provenance.write(run_dir, current)
        return
    for line in provenance.differences(recorded, current):
        echo(f"warning: resuming with a different {line} (finished jobs ran with the recorded one)")
    unchecked = provenance.not_recorded(recorded)
    if unchecked:
        echo(f"note: not checked, the run's provenance.json does not record them: {'; '.join(unchecked)}")


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
    mirror: RunMirror | None = None,
) -> Manifest:
    """Run every job of ``manifest`` that is not done. Ctrl-C leaves unfinished jobs pending.

    With a ``mirror``, the run directory is pushed to its URI after every finished job,
    at every status line and at the end.
    """
    import ray

    jobs = {job.id: job for job in plan_jobs(spec)}
    todo = [jid for jid in manifest.pending() if jid in jobs]
    records = _load_records(spec)  # fail on bad data before any work starts
    total, finished = len(jobs), len(jobs) - len(todo)
    if not todo:
        echo("all jobs already done")
        return manifest
    _record_model(spec, run_dir, echo)
    _record_provenance(spec, run_dir, echo, records)

    owns_ray = start_ray(spec, address, run_dir.name)
    limits = Limits(memory_mb=spec.eval.memory_mb, disk_mb=spec.eval.disk_mb, max_files=spec.eval.max_files)
    pool = SandboxPool.start(
        size=spec.eval.pool_size, preload=spec.eval.preload, limits=limits, name=f"sandbox-{run_dir.name}",
        wait=False,
    )
    record_refs = {name: ray.put(recs) for name, recs in records.items()}
    scored_ids = frozenset(r.id for recs in records.values() for r in recs)
    eval_task = ray.remote(num_cpus=1, max_retries=0)(_eval_task)
    cpus_per_job = _cpus_per_job(spec.resources.num_workers)
    queue = [job.id for job in run_order([jobs[jid] for jid in todo])]
    running: dict = {}  # ObjectRef -> job id
    started_at: dict[str, float] = {}
    last_status = time.monotonic()
    try:
        while queue or running:
            while len(running) < spec.resources.num_workers:
                job = _next_job(queue, jobs, running.values())
                if job is None:
                    break
                request = _request(spec, job, run_dir, scored_ids)
                ref = eval_task.options(name=f"eval {job.label}",
                                        **task_resources(spec, job, cpus_per_job)).remote(
                    request, record_refs[job.dataset.name], pool.for_job(job.method.name, job.dataset.name)
                )
                running[ref] = job.id
                started_at[job.id] = time.monotonic()
                manifest.update(job.id, "running")
                echo(f"[{finished}/{total}] started  {job.label}")
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                jid = running.pop(ref)
                finished += 1
                _finish(ref, jobs[jid], run_dir, manifest, echo, f"[{finished}/{total}]")
                _sync(mirror, echo)
            if running and time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                busy = ", ".join(f"{jid} {last_status - started_at[jid]:.0f}s" for jid in running.values())
                stats = pool.stats()
                done, passed = sum(s["done"] for s in stats), sum(s["passed"] for s in stats)
                echo(f"[{finished}/{total}] running: {busy}; programs executed: {done} ({passed} passed)")
                _sync(mirror, echo)
    finally:  # Ctrl-C or any error: nothing stays "running", nothing keeps computing
        for jid in running.values():  # the manifest first: whatever happens next, a resume redoes them
            manifest.update(jid, "pending", interrupted=True)
        pool.close()
        _sync(mirror, echo)
        if running:
            _stop(list(running), owns_ray)
    return manifest


def _stop(refs: list, owns_ray: bool) -> None:
    """End the tasks still running when the loop is left early.

    ``ray.cancel(force=True)`` racing a task's own reply can trip a check in Ray's core worker that kills
    the driver (the race class of ray-project/ray#54846; CI saw it on an interrupted run). Disconnecting
    is Ray's own cleanup: when a driver leaves, the cluster kills its tasks, and a local instance stops.
    Only a caller that brought its own Ray session keeps it, so its tasks are cancelled one by one.
    """
    import ray

    if owns_ray:
        ray.shutdown()
        return
    for ref in refs:
        ray.cancel(ref, force=True)


def _next_job(queue: list[str], jobs: dict[str, PlannedJob], running) -> PlannedJob | None:
    """The first queued job that may start now: not while another job of its training group runs."""
    busy = {jobs[jid].group for jid in running} - {None}
    for i, jid in enumerate(queue):
        if jobs[jid].group is None or jobs[jid].group not in busy:
            return jobs[queue.pop(i)]
    return None


def _sync(mirror: RunMirror | None, echo: Callable[[str], None]) -> None:
    """Push the run to its URI; a failed upload is reported and retried at the next push, never fatal."""
    if mirror is None:
        return
    try:
        mirror.push()
    except OSError as exc:
        echo(f"warning: upload to {mirror.uri} failed ({str(exc).splitlines()[0]}); the run is safe in "
             f"{mirror.local} and the next push retries")


def _eval_task(request: JobRequest, records: list, pool: SandboxPool) -> JobResult:
    import ray

    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    if cpus > 1:  # a worker process may have imported torch for an earlier 1-CPU task: set it again
        import torch

        torch.set_num_threads(cpus)
    return run_eval_job(request, records, pool)


def _cpus_per_job(num_workers: int) -> int:
    """The cluster's CPUs shared among the jobs that run at once, at most one node's worth."""
    import ray

    total = ray.cluster_resources().get("CPU", 1)
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    return max(1, int(min(largest, total // num_workers)))


def task_resources(spec: ExperimentSpec, job: PlannedJob, cpus_per_job: int = 1) -> dict[str, float]:
    """What a job's Ray task reserves: CPUs, and the GPU its method loads a model on (with ``use_gpu``).

    A job that computes with a model in its own process (prompting in-process, editing) gets its share
    of the cluster's CPUs (``cpus_per_job``: CPUs / ``resources.num_workers``) and uses them as torch
    threads; other jobs (bookkeeping, or waiting on Ray Train workers and actors) take one. Ray sets
    ``CUDA_VISIBLE_DEVICES`` to the GPU it gave, so ``cuda`` in the task is that GPU; without the
    reservation several jobs would share (and overfill) cuda:0.
    """
    cpus = cpus_per_job if runs_model_in_task(job.method.kind, job.method.options) else 1
    gpus = gpus_for(job.method.kind, job.method.options, spec.resources.use_gpu)
    return {"num_cpus": cpus, "num_gpus": gpus} if gpus else {"num_cpus": cpus}


def _request(spec: ExperimentSpec, job: PlannedJob, run_dir: Path,
             scored_ids: frozenset[str] = frozenset()) -> JobRequest:
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
            model=spec.model.model_dump(), work_dir=run_dir / "work" / job.id, seed=job.seed,
            use_gpu=spec.resources.use_gpu, method=job.method.name,
            shared_dir=run_dir / "work" / job.group if job.group else None,
            scorecard=spec.eval.scorecard, evaluated_ids=scored_ids,
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
        telemetry.record_job(job.method.name, job.dataset.name, "failed")
        echo(f"{counter} FAILED   {job.label}: {message}")
        return
    try:
        write_outputs(run_dir / "outputs" / job.id, result.files)
    except ValueError as exc:
        manifest.update(job.id, "failed", error=str(exc))
        telemetry.record_job(job.method.name, job.dataset.name, "failed")
        echo(f"{counter} FAILED   {job.label}: {exc}")
        return
    atomic_write_jsonl(run_dir / "predictions" / f"{job.id}.jsonl", result.rows)
    update_metrics(run_dir, job.id, result.metrics)
    timings = {k: round(v, 3) for k, v in result.timings.items()}
    p = result.metrics.get("pass@1")
    telemetry.record_job(job.method.name, job.dataset.name, "diverged" if result.diverged else "done", p)
    if result.diverged:
        manifest.update(job.id, "diverged", timings=timings, error=f"diverged: {result.diverged}")
        echo(f"{counter} DIVERGED {job.label}: {result.diverged}")
        return
    manifest.update(job.id, "done", timings=timings)
    shown = f"pass@1={p:.3f}" if p is not None else "pass@1=n/a"
    echo(f"{counter} done     {job.label}  {shown}  n={result.metrics['n']}")


def write_outputs(out_dir: Path, files: dict[str, str]) -> None:
    """A method's artifacts, each written atomically; names may not leave ``out_dir``."""
    root = out_dir.resolve()
    for rel, text in files.items():
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"method artifact path escapes its directory: {rel!r}")
        atomic_write_text(target, text)


def update_metrics(run_dir: Path, job_id: str, values: dict) -> None:
    """``metrics.json[method][dataset]``: the job's metrics; for a method run with several seeds, each seed's
    under ``per_seed`` and their mean (over the seeds finished so far) at the top."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    method, dataset, seed = split_job_id(job_id)
    if seed is None:
        metrics.setdefault(method, {})[dataset] = values
    else:
        per_seed = metrics.setdefault(method, {}).get(dataset, {}).get("per_seed", {})
        per_seed[str(seed)] = values
        metrics[method][dataset] = {**mean_over_seeds(list(per_seed.values())), "per_seed": per_seed}
    atomic_write_json(path, metrics)


def mean_over_seeds(per_seed: list[dict]) -> dict:
    keys = [k for k in per_seed[0] if all(isinstance(v.get(k), (int, float)) for v in per_seed)]
    out = {k: sum(v[k] for v in per_seed) / len(per_seed) for k in keys}
    if "n" in out:
        out["n"] = per_seed[0]["n"]  # the records, not a mean
    return out
