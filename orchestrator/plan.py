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


# Which jobs start first when not all run at once: the longest kinds, so a short job never holds a slot
# while a long one waits (longest-processing-time first keeps the run's wall time near its lower bound).
EXPECTED_COST = {"grpo": 0, "sft": 1, "dpo": 1, "distill": 1, "edit": 2, "teacher": 3, "prompt": 3}


def run_order(jobs: list[PlannedJob]) -> list[PlannedJob]:
    """``jobs`` in the order to start them: expensive kinds first, the spec's order among equals."""
    return sorted(jobs, key=lambda j: EXPECTED_COST.get(j.method.kind, 9))
