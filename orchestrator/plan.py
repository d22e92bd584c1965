"""Planning: which jobs an experiment consists of."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.methods.registry import stochastic, trains_once_for_all_datasets
from orchestrator.spec import DatasetSpec, ExperimentSpec, MethodSpec


@dataclass(frozen=True)
class PlannedJob:
    # "<method>__<dataset>", or "<method>__<dataset>__s<seed>" for a stochastic method run with several
    # seeds: also the predictions file's stem. Names never hold "__", so the parts are unambiguous.
    id: str
    method: MethodSpec
    dataset: DatasetSpec
    seed: int = 0
    # Jobs with the same group share one training run (the method trains once for every dataset): they
    # run one at a time, so the second finds the adapter the first trained. None = independent.
    group: str | None = None

    @property
    def label(self) -> str:
        """How logs and the dashboard name the job: ``method x dataset``, with the seed where there are several."""
        seeded = split_job_id(self.id)[2] is not None
        return f"{self.method.name} x {self.dataset.name}" + (f" (seed {self.seed})" if seeded else "")


def plan_jobs(spec: ExperimentSpec) -> list[PlannedJob]:
    """One job per (method, dataset, seed): the method predicts, the eval job executes and scores.

    Stochastic methods get a job per seed of ``spec.run_seeds`` (where there are several); deterministic
    ones run once with the first seed. A method's ``datasets`` restricts which datasets it is scored on.
    """
    seeds = spec.run_seeds
    jobs = []
    for m in spec.methods:
        per_seed = seeds if len(seeds) > 1 and stochastic(m.kind, m.options) else seeds[:1]
        shared = trains_once_for_all_datasets(m.kind, m.options)
        for d in spec.datasets:
            if m.datasets is not None and d.name not in m.datasets:
                continue
            for seed in per_seed:
                suffix = f"__s{seed}" if len(per_seed) > 1 else ""
                group = f"{m.name}{suffix}" if shared else None
                jobs.append(PlannedJob(f"{m.name}__{d.name}{suffix}", m, d, seed, group))
    return jobs


def split_job_id(job_id: str) -> tuple[str, str, int | None]:
    """``(method, dataset, seed)`` of a job id; seed None for a job without a seed suffix."""
    parts = job_id.split("__")
    seed = int(parts[2][1:]) if len(parts) > 2 else None
    return parts[0], parts[1], seed


# Which jobs start first when not all run at once: the longest kinds, so a short job never holds a slot
# while a long one waits (longest-processing-time first keeps the run's wall time near its lower bound).
EXPECTED_COST = {"grpo": 0, "sft": 1, "dpo": 1, "distill": 1, "edit": 2, "teacher": 3, "prompt": 3}


def run_order(jobs: list[PlannedJob]) -> list[PlannedJob]:
    """``jobs`` in the order to start them: expensive kinds first, the spec's order among equals."""
    return sorted(jobs, key=lambda j: EXPECTED_COST.get(j.method.kind, 9))
