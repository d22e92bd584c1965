"""Divergence guards and the fault-injection hook, as transformers ``TrainerCallback``s.

:class:`DivergenceGuard` looks at every log the Trainer writes (every
``logging_steps``). The runner sets ``logging_nan_inf_filter=False``: with the
Trainer's default a NaN/inf loss is silently replaced in the logged average,
which would hide exactly what this guard looks for. The logged loss is the
mean over all workers and the gradient norm is the global one, so every
worker reaches the same verdict at the same step and they stop together.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from transformers import TrainerCallback

STEP_KEYS = ("loss", "grad_norm", "learning_rate", "epoch", "reward")
EVAL_KEYS = ("eval_loss", "eval_reward")  # the validation scores (options.validation), logged every eval step
LOSS_FLOOR = 50.0  # a loss above max(LOSS_FLOOR, EXPLOSION_FACTOR x the first one) has exploded
EXPLOSION_FACTOR = 10.0


class DivergenceGuard(TrainerCallback):
    """Stop training at the first log with a non-finite or exploded loss, or a gradient norm that is
    non-finite or collapsed to exactly 0 after being positive (a too-high learning rate saturates the
    model: the loss sits at ln(vocabulary) and nothing trains any more).

    ``report`` (e.g. ``ray.train.report``) receives every step's metrics, so a
    Ray Tune trial running the same code sees per-step loss and gradient norm:
    at most every ``min_interval_s``, the newest value of each key at the top
    level (validation scores too) and all logs since the previous report in
    ``history``; a divergence is reported at once. ``agree`` makes the
    when-to-report decision the same on every worker (``ray.train.report`` is a
    collective). ``stop=False`` only flags the divergence and lets training run
    on (a plain search without the guard, as a baseline).
    """

    def __init__(self, report: Callable[[dict], None] | None = None, min_interval_s: float = 0.0,
                 agree: Callable[[bool], bool] | None = None, verdict: Verdict | None = None, stop: bool = True):
        self.report, self.min_interval_s, self.verdict, self.stop = report, min_interval_s, verdict, stop
        self.agree = agree or (lambda due: due)  # a collective: every worker takes rank 0's decision
        self.pending: list[dict] = []
        self.last_report = time.monotonic()
        self.diagnosis: str | None = None
        self.first_loss: float | None = None
        self.had_gradient = False

    def check(self, logs: dict, step: int) -> str | None:
        lr = logs.get("learning_rate")
        at = f"at step {step}" + (f" (learning_rate={float(lr):.3g})" if lr is not None else "")
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in logs and not math.isfinite(float(logs[key])):
                return f"non-finite {key.replace('_', ' ')} ({float(logs[key])}) {at}"
        if "grad_norm" in logs:
            if float(logs["grad_norm"]) > 0:
                self.had_gradient = True
            # Exactly zero after training had gradients: saturated, dead units. Not in GRPO when every
            # group's rewards are equal (frac_reward_zero_std = 1): its advantages, and gradient, are 0.
            elif self.had_gradient and float(logs.get("frac_reward_zero_std", 0.0)) < 1.0:
                return f"gradient norm collapsed to 0 (saturated model) {at}"
        if "loss" in logs:
            loss = float(logs["loss"])
            if self.first_loss is None:
                self.first_loss = loss
            limit = max(LOSS_FLOOR, EXPLOSION_FACTOR * self.first_loss)
            if loss > limit:
                return f"loss exploded to {loss:.4g} (first {self.first_loss:.4g}) {at}"
        return None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not any(k in logs for k in ("loss", "grad_norm", *EVAL_KEYS)):
            return  # the end-of-training summary (train_loss, train_runtime, ...)
        flagged = False
        if self.diagnosis is None:
            self.diagnosis = self.check(logs, state.global_step)
            flagged = self.diagnosis is not None
        stopping = self.stop and self.diagnosis is not None
        if stopping:
            control.should_training_stop = True
            control.should_save = False  # a diverged state is not worth resuming from
        if self.report is None:
            return
        metrics = {"step": state.global_step, **{k: float(logs[k]) for k in STEP_KEYS + EVAL_KEYS if k in logs}}
        if self.diagnosis is not None:
            metrics["diverged"] = self.diagnosis
        self.pending.append(metrics)
        # A validation score is reported at once, as of its step (a scheduler compares trials at the steps
        # they were scored); a training log that the Trainer follows with a validation run waits for the score.
        scored = any(k in logs for k in EVAL_KEYS)
        scoring_next = "loss" in logs and control.should_evaluate
        due = flagged or scored or (
            not scoring_next and time.monotonic() - self.last_report >= self.min_interval_s)
        if self.agree(due):
            self._flush()
            if scored and self.verdict is not None and not stopping:
                self.verdict.wait(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.report is not None and self.agree(bool(self.pending)):
            self._flush()

    def _flush(self) -> None:
        # Ray Train V2 holds one unconsumed report per worker and its controller takes them every 2 s:
        # a report per step would stall every fast step, so the steps since the last report travel together.
        latest: dict = {}
        for metrics in self.pending:  # the newest value of every key: a validation score logged mid-batch stays
            latest.update(metrics)
        self.report({**latest, "history": self.pending})
        self.pending = []
        self.last_report = time.monotonic()


def degenerate(text: str) -> bool:
    """An answer of at least 8 visible characters drawn from at most two (``!!!!!!!!``, ``))))))))``).

    Empty answers are not counted: an untrained model that stops at once is weak, not broken.
    """
    chars = [c for c in text if not c.isspace()]
    return len(chars) >= 8 and len(set(chars)) <= 2


def degenerate_answers(texts: Sequence[str], threshold: float = 0.5) -> str | None:
    """A diagnosis when more than ``threshold`` of the answers are degenerate (e.g. only "!!!!")."""
    if not texts:
        return None
    bad = [t for t in texts if degenerate(t)]
    if len(bad) / len(texts) <= threshold:
        return None
    sample = next((t.strip()[:20] for t in bad if t.strip()), "")
    return f"degenerate generations: {len(bad)}/{len(texts)} answers repeat one or two characters (e.g. {sample!r})"


class Verdict:
    """A file where a scheduler acknowledges a trial's reports: after reporting a validation score at
    ``step``, a worker waits until the file holds ``step`` or more, i.e. the scheduler has read the
    score and lets the trial go on. A trial the scheduler stops is killed while it waits, so it runs
    no steps past its last rung (without the pause it trained on until the kill, seconds later).
    """

    def __init__(self, path: Path, timeout_s: float = 30.0, poll_s: float = 0.02):
        self.path, self.timeout_s, self.poll_s = Path(path), timeout_s, poll_s
        self.unanswered = False  # a wait timed out (no scheduler writes the file): stop waiting

    def grant(self, step: int) -> None:
        """The scheduler's side: the trial may train past ``step``."""
        _write_count(self.path, step)

    def wait(self, step: int) -> bool:
        """The worker's side: True once granted; False after ``timeout_s``, and from then on at once."""
        deadline = time.monotonic() + self.timeout_s
        while not self.unanswered and time.monotonic() < deadline:
            if steps_done(self.path) >= step:
                return True
            time.sleep(self.poll_s)
        self.unanswered = True
        return False


class StepProgress(TrainerCallback):
    """Rank 0 keeps ``path`` holding the number of optimizer steps done: what a trial stopped between two
    reports (ASHA kills it) really ran, for the search's step accounting."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_step_end(self, args, state, control, **kwargs):
        _write_count(self.path, state.global_step)


def _write_count(path: Path, value: int) -> None:
    """Replace ``path`` with ``value`` at once (readers poll it); no fsync: a marker, rewritten often."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(str(value))
    tmp.replace(path)


def steps_done(path: Path) -> int:
    """The count a :class:`StepProgress` or :meth:`Verdict.grant` left at ``path`` (0 when there is none)."""
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return 0


class FaultInjection(TrainerCallback):
    """Test hook: hard-kill (``os._exit``) the worker of rank ``rank`` once, after step ``step``.

    A marker file makes it happen once per job, so the restarted worker group trains on.
    """

    def __init__(self, step: int, marker: Path, rank: int, this_rank: int):
        self.step, self.marker, self.armed = step, marker, rank == this_rank

    def on_step_end(self, args, state, control, **kwargs):
        if self.armed and state.global_step == self.step and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"killed after step {self.step}\n")
            os._exit(17)


class CheckpointReport(TrainerCallback):
    """Report each Trainer checkpoint to Ray Train as ``checkpoint-<step>/checkpoint``, then mark it complete.

    Ray Train V2 collects reports from workers on its health-check poll (2 s):
    a worker killed right after reporting can take that checkpoint with it.
    So after every worker has uploaded its part (a barrier), rank 0 writes
    ``pointer`` (``{"step", "dir"}``) atomically; a restart resumes from
    whichever is newer, Ray's checkpoint or the pointer's.
    """

    def __init__(self, pointer: Path, rank: int, report: Callable, make_checkpoint: Callable, barrier: Callable):
        self.pointer, self.rank = pointer, rank
        self.report, self.make_checkpoint, self.barrier = report, make_checkpoint, barrier

    def on_save(self, args, state, control, **kwargs):
        import shutil
        import tempfile

        from transformers.trainer_utils import get_last_checkpoint

        from data.io import atomic_write_json

        metrics = {"step": state.global_step}
        for log in state.log_history:
            metrics.update({k: v for k, v in log.items() if isinstance(v, (int, float))})
        name = f"checkpoint-{state.global_step:06d}"
        source = get_last_checkpoint(args.output_dir)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if source is not None:  # DDP: rank 0 holds the model, the others only their RNG state
                shutil.copytree(source, Path(tmp) / "checkpoint")
                checkpoint = self.make_checkpoint(tmp)
            self.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        self.barrier()  # every worker's files are in storage now
        if self.rank == 0:
            atomic_write_json(self.pointer, {"step": state.global_step, "dir": name})
