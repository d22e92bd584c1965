"""A backend's configuration (the ``backend:`` section of a prompt or teacher method) and its stats.

Where answers come from only: how they are sampled is the method's ``generation:`` section
(``jobs.inference.generation.GenerationOptions``), the same type for every method.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

HTTP_KINDS = ("openai", "anthropic", "custom")
CACHE_ENV = "APIMIG_LLM_CACHE"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")
    input: NonNegativeFloat = 0.0
    output: NonNegativeFloat = 0.0


class BackendConfig(BaseModel):
    """Where generations come from.

    ``api_key_env`` is the NAME of the environment variable holding the key
    (``OPENAI_API_KEY``), never the key itself: specs, manifests and logs only
    ever see the name. ``prices`` maps a model name to its price; the model's
    entry (if any) gives ``cost_usd`` in the stats.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: Literal["hf", "vllm", "openai", "anthropic", "custom"] = "hf"
    model: str | None = None  # hf: default the spec's model; HTTP: the server's model name
    base_url: str | None = None  # HTTP kinds: e.g. http://localhost:8000/v1 (OpenAI), https://api.anthropic.com
    api_key_env: str | None = Field(None, pattern=_ENV_NAME)
    timeout_s: PositiveFloat = 60.0  # per HTTP attempt
    max_retries: int = Field(4, ge=0, le=20)  # attempts after the first, on 429/5xx/connection errors
    backoff_s: PositiveFloat = 1.0  # first backoff; doubles per retry, with jitter
    max_backoff_s: PositiveFloat = 60.0  # cap on one wait (Retry-After included)
    concurrency: PositiveInt = 4  # HTTP requests in flight at once
    cache: bool = True
    cache_dir: str | None = None  # default: $APIMIG_LLM_CACHE or ~/.cache/apimig/llm
    prices: dict[str, Price] = Field(default_factory=dict)
    workers: int | None = Field(None, ge=0)  # hf: N Ray actors (a GPU each with use_gpu); None/0: in the job's task
    # vllm: where it cannot run (no GPU, not installed), "hf" answers with transformers and says so; "none" fails
    fallback: Literal["hf", "none"] = "hf"
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)  # vllm: share of the GPU its engine may take

    @model_validator(mode="after")
    def _check(self) -> "BackendConfig":
        if self.kind in HTTP_KINDS:
            if not self.base_url:
                raise ValueError(f"base_url: backend kind '{self.kind}' needs a base_url")
            if not re.match(r"^https?://", self.base_url):
                raise ValueError("base_url: must start with http:// or https://")
            if self.kind != "custom" and not self.model:
                raise ValueError(f"model: backend kind '{self.kind}' needs a model name")
        elif self.base_url:
            raise ValueError(f"base_url: backend kind '{self.kind}' runs the model locally and takes no base_url")
        if self.kind == "vllm" and self.workers:
            raise ValueError("workers: the vllm backend runs in the job's own task (vLLM batches by itself)")
        return self

    def cache_root(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "apimig" / "llm")


@dataclass
class BackendStats:
    """Counters every backend keeps; ``as_metrics`` names them ``backend_*`` for a job's metrics."""

    requests: int = 0  # generations asked for (one per chat and sample)
    http_calls: int = 0  # HTTP attempts actually sent (retries included)
    successes: int = 0
    failures: int = 0  # requests that failed after every retry
    retries: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0  # live calls only: a cached answer costs nothing
    completion_tokens: int = 0
    cost_usd: float | None = None  # None: no price for this model in the config
    fallbacks: int = 0  # vllm asked for but the hf path used (see jobs.inference.backends.vllm)

    def as_metrics(self) -> dict[str, float]:
        return {f"backend_{k}": float(v) for k, v in asdict(self).items() if v is not None}
