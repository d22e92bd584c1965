"""Method kinds. Adding one is a new module in ``jobs/methods/`` plus one line in :data:`METHODS`.

A method module defines ``Options`` (a :class:`MethodOptions` subclass: the
spec fields the kind accepts besides ``name`` and ``kind``) and
``predict(records, options, context) -> MethodOutput``. Modules are imported
lazily so a spec that uses no trainer never imports one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict

METHODS: dict[str, str] = {
    "reference": "jobs.methods.reference",
    "old_api": "jobs.methods.old_api",
    "rules": "jobs.methods.rules",
    "prompt": "jobs.methods.prompt",
    "teacher": "jobs.methods.teacher",
    "sft": "jobs.methods.sft",
    "dpo": "jobs.methods.dpo",
    "grpo": "jobs.methods.grpo",
    "distill": "jobs.methods.distill",
    "edit": "jobs.methods.edit",
}


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MethodContext:
    model: dict[str, Any]  # the spec's model section
    work_dir: Path  # this job's scratch directory inside the run
    # The method's directory shared by its jobs of one seed: a trainer that trains once for every dataset
    # (trains_once_for_all_datasets) keeps its run there, so the second dataset reuses the adapter.
    shared_dir: Path | None = None
    seed: int = 0
    use_gpu: bool = False
    method: str = ""  # the method's name in the spec: tags metrics and names Ray tasks
    executor: Any = None  # the run's sandbox pool (a jobs.sandbox.executor.Executor), for execution rewards
    # Compute the likelihood scorecard (jobs.inference.likelihood) with the model the method holds.
    scorecard: bool = False
    # Ids of every record the run scores, on any dataset: what a method learns from (training data,
    # covariance corpora, retain sets) must stay out of them, and a method that cannot says so.
    evaluated_ids: frozenset[str] = frozenset()

    @property
    def training_dir(self) -> Path:
        return self.shared_dir or self.work_dir


@dataclass
class MethodOutput:
    codes: list[str | None]  # one per record; None = the method has no answer for it
    train_time_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # method-specific extras
    # Artifacts a method made (rule library, generated dataset, adapter manifest): relative path -> text.
    # The driver writes them atomically under <run>/outputs/<job id>/, since only it writes the run dir.
    files: dict[str, str] = field(default_factory=dict)
    # Training stopped because loss/gradients went non-finite or generations degenerated: a one-line
    # diagnosis. The job is then recorded as "diverged" (its predictions, if any, are still evaluated).
    diverged: str | None = None
    # The prompts that produced the codes told the model about each record's update (data.prompts.shows_update):
    # only then are CodeUpdateArena's pass rates reported as UPass/SPass.
    shows_update: bool = False
    # The likelihood scorecard, one dict per record (jobs.inference.likelihood.score_records); None for a
    # method that holds no model (rules, oracles, HTTP backends).
    scores: list[dict[str, float]] | None = None


def gpus_for(kind: str, options: dict[str, Any], use_gpu: bool) -> float:
    """GPUs the job's own Ray task must hold: the kind's ``gpus(options)`` with ``use_gpu``, else 0.

    A kind that loads a model in the job's process (prompting in-process, editing) defines ``gpus``; kinds
    whose models run in Ray tasks or actors of their own (Ray Train workers, hf actors) return 0 there.
    """
    if not use_gpu:
        return 0.0
    module = method_module(kind)
    fn = getattr(module, "gpus", None)
    return float(fn(module.Options.model_validate(options))) if fn else 0.0


def runs_model_in_task(kind: str, options: dict[str, Any]) -> bool:
    """Does the kind compute with a model in the job's own process (its ``gpus(options)`` is not 0)? Such a
    job gets its share of the machine's CPUs, so torch's threads match what Ray reserved for it."""
    module = method_module(kind)
    fn = getattr(module, "gpus", None)
    return bool(fn and fn(module.Options.model_validate(options)))


def stochastic(kind: str, options: dict[str, Any]) -> bool:
    """Does the kind's result depend on its seed? Training does (initialisation, data order, sampling in
    GRPO); generation does when it samples. Such methods run once per seed of the spec's ``seeds``."""
    module = method_module(kind)
    if hasattr(module, "training_job"):
        return True
    generation = module.Options.model_validate(options).model_dump().get("generation") or {}
    return bool(generation.get("temperature", 0) > 0)


def trains_once_for_all_datasets(kind: str, options: dict[str, Any]) -> bool:
    """A trainer or editor whose data does not depend on the evaluated records learns once per seed, and
    the same adapter or edit answers every dataset (its jobs then share a directory and run one at a time).
    Trainers name their data ``train_data``; other kinds that learn expose ``learning_data(options)``."""
    module = method_module(kind)
    opts = module.Options.model_validate(options)
    if hasattr(module, "training_job"):
        sources = opts.train_data
    elif hasattr(module, "learning_data"):
        sources = module.learning_data(opts)
    else:
        return False
    from jobs.training.data import trains_on_eval_records

    return not trains_on_eval_records(sources)


def method_module(kind: str) -> ModuleType:
    if kind not in METHODS:
        raise KeyError(f"unknown method kind '{kind}' (known: {', '.join(sorted(METHODS))})")
    return importlib.import_module(METHODS[kind])
