"""Planning: which jobs an experiment consists of."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.spec import DatasetSpec, ExperimentSpec, MethodSpec


@dataclass(frozen=True)
class PlannedJob:
    id: str  # "<method>__<dataset>": also the predictions file's stem
    method: MethodSpec
    dataset: DatasetSpec


def plan_jobs(spec: ExperimentSpec) -> list[PlannedJob]:
    """One job per (method, dataset): the method predicts, the eval job executes and scores."""
    return [PlannedJob(f"{m.name}__{d.name}", m, d) for m in spec.methods for d in spec.datasets]
