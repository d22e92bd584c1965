"""Sandbox servers as Ray actors: one pool per cluster, shared by eval jobs and GRPO rewards.

Each :class:`SandboxActor` owns one warm ``ForkServer``. Actors reserve no
logical CPU on purpose: they must never keep a training or inference task
from being scheduled, and their number (one per cluster CPU by default)
already bounds how much they run at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import ray

from jobs import telemetry
from jobs.sandbox.executor import ExecResult, Program
from jobs.sandbox.slots import DEFAULT_PRELOAD, Limits, Sandbox

CHUNK = 4  # programs per actor call: amortizes Ray's per-call overhead, small enough to balance load
IN_FLIGHT = 2  # calls queued per actor, so an actor never waits for the driver between chunks


class SandboxActor:
    def __init__(self, preload: Sequence[str] = DEFAULT_PRELOAD, limits: Limits = Limits()):
        self.sandbox = Sandbox(preload=preload)
        self.isolation = self.sandbox.isolation  # starts the bare server now; the others on first use
        self.limits = limits
        self.done = 0
        self.passed = 0

    def run(self, programs: list[Program], timeout_s: float) -> list[ExecResult]:
        results = [self.sandbox.run(p, timeout_s, self.limits) for p in programs]
        passed = sum(r.passed for r in results)
        self.done += len(results)
        self.passed += passed
        telemetry.record_sandbox([r.duration_s for r in results], passed)
        return results

    def warm(self, profiles: list) -> int:
        self.sandbox.warm(profiles)
        return len(self.sandbox.servers)

    @ray.method(concurrency_group="status")
    def stats(self) -> dict[str, int | str]:
        # Its own concurrency group: answered while `run` calls are queued. Reads counters only.
        return {"done": self.done, "passed": self.passed, "isolation": self.isolation}


@dataclass
class SandboxPool:
    """An ``Executor`` backed by Ray actors; results come back in input order.

    ``labels`` (method, dataset) tag the eval metrics this pool records; see :meth:`for_job`.
    """

    actors: list
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls, size: int | None = None, preload: Sequence[str] = DEFAULT_PRELOAD, limits: Limits = Limits(),
        name: str = "sandbox", wait: bool = True,
    ) -> "SandboxPool":
        """``wait=False``: return at once and let the servers warm while the first jobs start (they
        generate long before they run programs); calls queue on an actor until it is up."""
        size = size or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0,
                            concurrency_groups={"status": 1})(SandboxActor)
        actors = [remote.options(name=f"{name}-{i}").remote(preload, limits) for i in range(size)]
        if wait:
            ray.get([a.stats.remote() for a in actors])  # every server warm
        return cls(actors, tuple(preload))

    def for_job(self, method: str, dataset: str) -> "SandboxPool":
        """The same actors, recording programs done/passed under this job's method and dataset."""
        return replace(self, labels={"method": method, "dataset": dataset})

    def run(
        self, programs: Sequence[Program], timeout_s: float, progress: Callable[[int], None] | None = None
    ) -> list[ExecResult]:
        chunks = [list(programs[i : i + CHUNK]) for i in range(0, len(programs), CHUNK)]
        results: list[list[ExecResult] | None] = [None] * len(chunks)
        pending: dict = {}
        idle = [a for a in self.actors for _ in range(IN_FLIGHT)]
        next_chunk = 0
        done = passed = 0
        while next_chunk < len(chunks) or pending:
            while idle and next_chunk < len(chunks):
                actor = idle.pop()
                pending[actor.run.remote(chunks[next_chunk], timeout_s)] = (next_chunk, actor)
                next_chunk += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index, actor = pending.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):  # count the chunk as failed
                    results[index] = [ExecResult("failed", False, None, 0.0, note="sandbox actor died")
                                      for _ in chunks[index]]
                idle.append(actor)
                chunk_passed = sum(r.passed for r in results[index])  # type: ignore[union-attr]
                done, passed = done + len(chunks[index]), passed + chunk_passed
                if self.labels:  # an eval job's pool; GRPO rewards show up in the sandbox metrics only
                    telemetry.record_programs(len(chunks[index]), chunk_passed, total_done=done,
                                              total_passed=passed, **self.labels)
                if progress:
                    progress(len(chunks[index]))
        return [r for chunk in results for r in chunk]  # type: ignore[union-attr]

    def warm(self, programs: Sequence[Program]) -> None:
        """Start, on every actor, the servers these programs will need."""
        router = Sandbox(preload=self.preload)
        profiles = sorted({router.profile(p) for p in programs}, key=repr)
        ray.get([a.warm.remote(profiles) for a in self.actors])

    def stats(self) -> list[dict]:
        return ray.get([a.stats.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
