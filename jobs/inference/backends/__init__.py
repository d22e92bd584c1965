"""Inference backends behind one interface: chats in, ``num_samples`` answers per chat out.

Every backend has ``generate(chats) -> list[list[str | None]]`` (``None``: that
sample failed after its retries), ``stats() -> BackendStats`` and ``close()``.
Where answers come from is the backend's ``config``; how they are sampled is
the method's ``generation`` section (``jobs.inference.generation.GenerationOptions``).
Kinds: ``hf`` (local transformers, :mod:`jobs.inference.backends.hf`), ``vllm`` (vLLM's
engine on the job's GPU, falling back to ``hf`` where it cannot run: :mod:`jobs.inference.backends.vllm`), ``openai``,
``anthropic`` and ``custom`` (HTTP, :mod:`jobs.inference.backends.protocols`, sharing
retries, cache and stats from :mod:`jobs.inference.backends.http`). See docs/inference.md.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from jobs.inference.backends.config import HTTP_KINDS, BackendConfig, BackendStats, Price
from jobs.inference.backends.http import BackendError
from jobs.inference.generation import GenerationOptions

__all__ = ["Backend", "BackendConfig", "BackendError", "BackendStats", "HTTP_KINDS", "Price", "make_backend"]


class Backend(Protocol):
    config: BackendConfig
    generation: GenerationOptions

    def generate(self, chats: Sequence[Sequence[dict]], strategy: str | None = None) -> list[list[str | None]]: ...

    def stats(self) -> BackendStats: ...

    def close(self) -> None: ...


def make_backend(config: BackendConfig, model_spec: dict[str, Any] | None = None, *,
                 generation: GenerationOptions = GenerationOptions(), use_gpu: bool = False, seed: int = 0) -> Backend:
    """The backend ``config`` describes, sampling as ``generation`` says; ``model_spec`` (the spec's model
    section) is the hf default model."""
    if config.kind == "vllm":
        from jobs.inference.backends.vllm import VLLMBackend, vllm_unavailable, warn_fallback

        reason = vllm_unavailable(use_gpu)
        if reason is None:
            return VLLMBackend(config, model_spec or {"name": "tiny"}, generation=generation, seed=seed)
        if config.fallback == "none":
            raise BackendError(f"backend vllm: {reason} (and fallback is 'none')")
        warn_fallback("backend vllm", reason)
        from jobs.inference.backends.hf import HFBackend

        return HFBackend(config.model_copy(update={"kind": "hf"}), model_spec or {"name": "tiny"},
                         generation=generation, use_gpu=use_gpu, seed=seed, fallbacks=1)
    if config.kind == "hf":
        from jobs.inference.backends.hf import HFBackend

        return HFBackend(config, model_spec or {"name": "tiny"}, generation=generation, use_gpu=use_gpu, seed=seed)
    from jobs.inference.backends.protocols import AnthropicMessages, CustomRest, OpenAIChat

    cls = {"openai": OpenAIChat, "anthropic": AnthropicMessages, "custom": CustomRest}[config.kind]
    return cls(config, generation=generation, seed=seed)
