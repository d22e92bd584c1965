"""The ``vllm`` backend: vLLM's offline engine on the job's GPU, for prompting and for answering
with a trained LoRA adapter.

vLLM is optional, not a dependency: it pins its own CUDA build of torch, so it lives on GPU
machines only (``bench/gpu_smoke.sh`` installs it). Where it cannot run (``use_gpu`` off,
not installed, no CUDA device) the job falls back to the ``hf`` path and says so: a warning
in the log and ``backend_fallbacks`` in its metrics. ``fallback: none`` makes that an error
instead, for runs whose cost estimate depends on vLLM.

vLLM itself does the batching (continuous batching, paged KV cache); answers are whole
completions up to ``max_new_tokens`` (no per-sequence stop at the answer's end: on a GPU the
tail costs little, and ``codes_from_texts`` reads the first complete block either way).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.inference.backends.config import BackendConfig, BackendStats
from jobs.inference.generation import GenerationOptions

log = logging.getLogger(__name__)


def vllm_unavailable(use_gpu: bool) -> str | None:
    """Why vLLM cannot run for this job, or None when it can."""
    if not use_gpu:
        return "resources.use_gpu is false (vLLM runs on GPUs only)"
    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed (pip install vllm, on a GPU machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible to this job"
    return None


def warn_fallback(what: str, reason: str) -> None:
    """Loud on purpose: a run that silently lost its vLLM path costs hours, not minutes."""
    message = f"{what}: vLLM unavailable ({reason}); falling back to the hf path"
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)


def sampling_params(generation: GenerationOptions, seed: int):
    from vllm import SamplingParams

    sample = generation.temperature > 0
    return SamplingParams(n=generation.num_samples, temperature=generation.temperature,
                          top_p=generation.top_p if sample else 1.0, max_tokens=generation.max_new_tokens, seed=seed)


def engine(model_spec: dict[str, Any], *, seed: int, gpu_memory_utilization: float, max_lora_rank: int | None = None):
    """A vLLM ``LLM`` for the spec's model (the converted directory for GGUF models and built-in aliases)."""
    from vllm import LLM

    from jobs.inference.models import load_kwargs, model_path

    kwargs = load_kwargs(model_spec)
    dtype = model_spec.get("dtype") or "auto"
    lora = {"enable_lora": True, "max_lora_rank": max_lora_rank} if max_lora_rank else {}
    return LLM(model=model_path(model_spec), revision=kwargs.get("revision"), dtype=dtype, seed=seed,
               trust_remote_code=bool(kwargs.get("trust_remote_code")),
               gpu_memory_utilization=gpu_memory_utilization, **lora)


def chat_answers(llm, chats: Sequence[Sequence[dict]], generation: GenerationOptions, seed: int,
                 adapter_dir: Path | None = None) -> list[list[str]]:
    """``num_samples`` completions per chat, in order; with ``adapter_dir``, from base + that LoRA adapter."""
    request = None
    if adapter_dir is not None:
        from vllm.lora.request import LoRARequest

        request = LoRARequest("adapter", 1, str(adapter_dir))
    outputs = llm.chat([list(c) for c in chats], sampling_params(generation, seed), lora_request=request,
                       use_tqdm=False)
    return [[c.text for c in o.outputs] for o in outputs]


class VLLMBackend:
    kind = "vllm"

    def __init__(self, config: BackendConfig, model_spec: dict[str, Any], *,
                 generation: GenerationOptions = GenerationOptions(), seed: int = 0):
        self.config = config
        self.generation = generation
        self.seed = seed
        self.model_spec = dict(model_spec, name=config.model) if config.model else dict(model_spec)
        self.llm = engine(self.model_spec, seed=seed, gpu_memory_utilization=config.gpu_memory_utilization)
        self._stats = BackendStats()

    def generate(self, chats: Sequence[Sequence[dict]], strategy: str | None = None) -> list[list[str | None]]:
        out = chat_answers(self.llm, chats, self.generation, self.seed)
        self._stats.requests += len(chats) * self.generation.num_samples
        self._stats.successes += sum(len(a) for a in out)
        return out

    def stats(self) -> BackendStats:
        return BackendStats(**vars(self._stats))

    def close(self) -> None:
        self.llm = None
