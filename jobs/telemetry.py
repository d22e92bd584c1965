"""Custom metrics for Ray's dashboard, Prometheus and Grafana, next to Ray's own.

Every metric is defined here, recorded through ``ray.util.metrics`` and
exported by each node's metrics agent; Prometheus sees them with Ray's
``ray_`` prefix, counters also with ``_total`` (``ray_apimig_eval_programs_total``). The ``record_*`` functions
are safe to call anywhere: they do nothing when Ray is not initialised in this
process (unit tests, plain scripts) and never raise, because a metric must
never fail the job it describes.

Training code calls :func:`record_train_step` / :func:`record_reward`, or
adds :func:`trainer_callback` to a transformers/TRL ``Trainer`` to get both
from the Trainer's own logs.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

log = logging.getLogger(__name__)

# Seconds per program: forked sandbox programs take milliseconds, timeouts take up to eval.timeout_s.
PROGRAM_SECONDS_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]

# key -> (type, Prometheus name without Ray's prefix, description, tag keys)
DEFINITIONS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "train_loss": ("gauge", "apimig_train_loss", "Training loss at the latest logged step", ("method",)),
    "train_grad_norm": ("gauge", "apimig_train_grad_norm", "Gradient norm at the latest logged step", ("method",)),
    "train_steps": ("counter", "apimig_train_steps", "Logged optimizer steps", ("method",)),
    "reward": ("gauge", "apimig_reward", "Mean reward at the latest logged step (RL methods)", ("method",)),
    "eval_programs": ("counter", "apimig_eval_programs", "Eval programs executed", ("method", "dataset")),
    "eval_passed": ("counter", "apimig_eval_programs_passed", "Eval programs that passed", ("method", "dataset")),
    "eval_pass_rate": ("gauge", "apimig_eval_pass_rate", "Fraction of a job's eval programs passed so far",
                       ("method", "dataset")),
    "jobs_finished": ("counter", "apimig_jobs_finished", "Experiment jobs finished, by final state",
                      ("method", "dataset", "state")),
    "job_pass_at_1": ("gauge", "apimig_job_pass_at_1", "pass@1 of a finished job", ("method", "dataset")),
    "sandbox_programs": ("counter", "apimig_sandbox_programs", "Programs run by sandbox actors (any caller)",
                         ("result",)),
    "sandbox_seconds": ("histogram", "apimig_sandbox_program_seconds", "Wall time of one sandboxed program", ()),
}

_metrics: dict[str, Any] = {}


def _ray_ready() -> bool:
    ray = sys.modules.get("ray")  # never import Ray just to find out it is not running
    return ray is not None and ray.is_initialized()


def _metric(key: str):
    metric = _metrics.get(key)
    if metric is None:
        from ray.util import metrics

        kind, name, description, tags = DEFINITIONS[key]
        if kind == "histogram":
            metric = metrics.Histogram(name, description, boundaries=PROGRAM_SECONDS_BOUNDARIES, tag_keys=tags)
        else:
            metric = {"gauge": metrics.Gauge, "counter": metrics.Counter}[kind](name, description, tag_keys=tags)
        _metrics[key] = metric
    return metric


def _emit(key: str, value: float | int | None, **tags: str) -> None:
    if value is None or not _ray_ready():
        return
    try:
        value = float(value)
        kind = DEFINITIONS[key][0]
        tags = {k: str(v) for k, v in tags.items()}
        if kind == "counter":
            if value > 0:  # Ray counters reject 0 and negatives
                _metric(key).inc(value, tags=tags)
        elif not math.isfinite(value):
            return  # a NaN loss is the divergence guard's business; it would only break dashboards
        elif kind == "gauge":
            _metric(key).set(value, tags=tags)
        else:
            _metric(key).observe(value, tags=tags)
    except Exception as exc:  # telemetry must never fail the work it measures
        log.debug("metric %s not recorded: %s", key, exc)


def record_train_step(method: str, loss: float | None, grad_norm: float | None = None) -> None:
    """One logged training step of ``method`` (the method's name in the spec)."""
    _emit("train_steps", 1, method=method)
    _emit("train_loss", loss, method=method)
    _emit("train_grad_norm", grad_norm, method=method)


def record_reward(method: str, value: float | None) -> None:
    """The mean reward of the latest RL step."""
    _emit("reward", value, method=method)


def record_programs(done: int, passed: int, method: str = "", dataset: str = "",
                    total_done: int | None = None, total_passed: int | None = None) -> None:
    """Eval programs that just finished for a job; with the job's running totals, its pass rate too."""
    _emit("eval_programs", done, method=method, dataset=dataset)
    _emit("eval_passed", passed, method=method, dataset=dataset)
    if total_done:
        _emit("eval_pass_rate", (total_passed or 0) / total_done, method=method, dataset=dataset)


def record_sandbox(durations_s: list[float], passed: int) -> None:
    """Programs a sandbox actor just ran: throughput is ``rate(ray_apimig_sandbox_programs_total[1m])``."""
    _emit("sandbox_programs", passed, result="passed")
    _emit("sandbox_programs", len(durations_s) - passed, result="failed")
    for seconds in durations_s:
        _emit("sandbox_seconds", seconds)


def record_job(method: str, dataset: str, state: str, pass_at_1: float | None = None) -> None:
    """A finished experiment job (done, failed, diverged) and its pass@1."""
    _emit("jobs_finished", 1, method=method, dataset=dataset, state=state)
    _emit("job_pass_at_1", pass_at_1, method=method, dataset=dataset)


def trainer_callback(method: str):
    """A transformers ``TrainerCallback`` forwarding the Trainer's logs (loss, grad_norm, reward) here.

    Built lazily so importing this module never imports transformers. Only the
    main process records, so data-parallel workers do not report a step twice.
    """
    from transformers import TrainerCallback

    class TelemetryCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if not state.is_world_process_zero:
                return
            if "loss" in logs:
                record_train_step(method, logs["loss"], logs.get("grad_norm"))
            if "reward" in logs:
                record_reward(method, logs["reward"])

    return TelemetryCallback()
