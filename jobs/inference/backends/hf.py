"""The ``hf`` backend: local transformers generation, in this process or on Ray actors.

Placement (``workers`` in the config):

- ``None`` or ``0`` (default): in this process, which already holds what its
  Ray task reserved: a CPU, and with ``use_gpu`` the GPU the driver asked Ray
  for on its behalf (the prompt method's :func:`gpus`).
- ``N > 0``: N actors, each with a GPU when ``use_gpu`` (else one CPU each);
  the task itself then reserves no GPU. A Ray task blocked in ``ray.get``
  gives its CPU back, so the actors can use it.

Chats are split into contiguous chunks, one per actor, and come back in
order. Generation itself is :func:`jobs.inference.generation.generate` (batched, greedy
or sampled, non-finite logits replaced before sampling).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from jobs.inference.backends.config import BackendConfig, BackendStats
from jobs.inference.generation import GenerationOptions, generate


class GenerationWorker:
    """One loaded model; the body of every actor (and of in-process generation)."""

    def __init__(self, model_spec: dict[str, Any], use_gpu: bool):
        from jobs.inference.models import load_model

        self.model, self.tokenizer = load_model(model_spec, use_gpu=use_gpu)

    def generate(self, chats: Sequence[Sequence[dict]], settings: GenerationOptions, seed: int,
                 strategy: str | None = None) -> list[list[str]]:
        return generate(self.model, self.tokenizer, chats, settings, seed, strategy)

    def score(self, records: Sequence, chats: Sequence[Sequence[dict]]) -> list[dict[str, float]]:
        from jobs.inference.likelihood import score_records

        return score_records(self.model, self.tokenizer, records, chats)


class HFBackend:
    kind = "hf"

    def __init__(self, config: BackendConfig, model_spec: dict[str, Any], *,
                 generation: GenerationOptions = GenerationOptions(), use_gpu: bool = False, seed: int = 0,
                 fallbacks: int = 0):
        self.config = config
        self.generation = generation
        self.seed = seed
        self.model_spec = dict(model_spec, name=config.model) if config.model else dict(model_spec)
        self.use_gpu = use_gpu
        self._local: GenerationWorker | None = None
        self._actors: list | None = None
        self._stats = BackendStats(fallbacks=fallbacks)  # 1: standing in for a vllm backend
        self._lock = threading.Lock()

    def actor_count(self) -> int:
        return self.config.workers or 0

    def _start_actors(self, n: int) -> list:
        import ray

        resources = {"num_gpus": 1, "num_cpus": 1} if self.use_gpu else {"num_cpus": 1}
        cls = ray.remote(**resources)(GenerationWorker)
        return [cls.remote(self.model_spec, self.use_gpu) for _ in range(n)]

    def _each_chunk(self, method: str, chats: list, *per_chat: Sequence, shared: tuple = ()) -> list:
        """``GenerationWorker.<method>`` over ``chats`` (and the per-chat lists beside them): in this
        process, or split into contiguous chunks over the actors, results back in order."""
        n = min(self.actor_count(), len(chats))
        if n == 0:
            if self._local is None:
                self._local = GenerationWorker(self.model_spec, self.use_gpu)
            return getattr(self._local, method)(*per_chat, chats, *shared)
        import ray

        if self._actors is None or len(self._actors) < n:
            self.close()
            self._actors = self._start_actors(n)
        size = -(-len(chats) // n)
        parts = [slice(i * size, (i + 1) * size) for i in range(n) if chats[i * size:(i + 1) * size]]
        refs = [getattr(a, method).remote(*(list(x[p]) for x in per_chat), chats[p], *shared)
                for a, p in zip(self._actors, parts)]
        return [item for part in ray.get(refs) for item in part]

    def generate(self, chats: Sequence[Sequence[dict]], strategy: str | None = None) -> list[list[str | None]]:
        """Answers per chat; ``strategy`` (the prompts') lets each sequence stop once its answer is complete."""
        chats = [list(c) for c in chats]
        out = self._each_chunk("generate", chats, shared=(self.generation, self.seed, strategy))
        with self._lock:
            self._stats.requests += len(chats) * self.generation.num_samples
            self._stats.successes += sum(len(a) for a in out)
        return out

    def score(self, records: Sequence, chats: Sequence[Sequence[dict]]) -> list[dict[str, float]]:
        """The likelihood scorecard of ``records`` after ``chats`` (jobs.inference.likelihood), read from the
        same model (or actors) that answered."""
        return self._each_chunk("score", [list(c) for c in chats], list(records))

    def stats(self) -> BackendStats:
        with self._lock:
            return BackendStats(**vars(self._stats))

    def close(self) -> None:
        if self._actors:
            import ray

            for actor in self._actors:
                ray.kill(actor)
        self._actors = None
