"""Spec options shared by every training method kind (``sft``, ``dpo``, ``grpo``, ``distill``).

A kind's ``Options`` subclasses :class:`TrainingOptions` and adds its own keys
(DPO's ``beta``, GRPO's rewards). Defaults are the divergence guards: gradient
clipping, warmup, logging every step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from jobs.inference.generation import GenerationOptions
from jobs.methods.registry import MethodOptions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AdapterOptions(_Strict):
    """A LoRA or DoRA adapter. ``scope: hierarchical`` adapts only ``layers`` (default: the deepest third)."""

    type: Literal["lora", "dora"] = "lora"
    rank: PositiveInt = 8
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )
    scope: Literal["standard", "hierarchical"] = "standard"
    # hierarchical only: [first, last] layer indices (inclusive, negative counts from the end); None = deepest third
    layers: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> "AdapterOptions":
        if self.layers is not None and self.scope != "hierarchical":
            raise ValueError("layers: only used with scope: hierarchical")
        return self


class DeepSpeedOptions(_Strict):
    stage: Literal[2, 3] = 2
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer states to CPU memory


class TrainDataSource(_Strict):
    """Where training examples come from: a dataset kind (see ``data.registry``) or a teacher-generated set.

    ``teacher`` is a ReCode-format JSONL written by a teacher model (text-level distillation). ``self`` is
    the records being evaluated: training on the test set, a smoke setting the report flags.
    """

    kind: Literal["migrations", "codeupdatearena", "recode", "teacher", "self"]
    path: str | None = None
    limit: PositiveInt | None = None
    split: Literal["train", "test"] | None = None  # built-in migrations: train = each case's first variant

    @model_validator(mode="after")
    def _check(self) -> "TrainDataSource":
        if self.split is not None and self.kind != "migrations":
            raise ValueError(f"split: only the built-in migrations have splits, not '{self.kind}'")
        if self.kind == "self" and (self.path or self.limit):
            raise ValueError("self: the evaluated records themselves; path and limit do not apply")
        if self.kind in ("recode", "teacher") and self.path is None:
            raise ValueError(f"path: training data of kind '{self.kind}' needs a path")
        return self


class ValidationOptions(_Strict):
    """Hold out part of the training examples and score them during training (``eval_loss``; GRPO: rewards).

    Scored at the start and every ``every_steps``: the validation metric a Ray Tune search and its ASHA
    scheduler compare trials on (``tune.metric: eval_loss``).
    """

    fraction: float = Field(0.1, gt=0, lt=1)
    every_steps: PositiveInt = 8


class TrainingOptions(MethodOptions):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    adapter: AdapterOptions = Field(default_factory=AdapterOptions)
    # Empty (or [{kind: self}]): train on the records being evaluated, i.e. test on the training set; the
    # job's metrics say so (trains_on_eval_records) and the report warns.
    train_data: list[TrainDataSource] = Field(default_factory=list)
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1)  # > 0 overrides epochs
    batch_size: PositiveInt = 4  # per worker
    grad_accum: PositiveInt = 1
    max_length: PositiveInt = 1024
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)  # clipping is a divergence guard: always on
    weight_decay: float = Field(0.0, ge=0)
    logging_steps: PositiveInt = 1  # the divergence guard checks at every log
    save_steps: PositiveInt = 50  # checkpoint period (a checkpoint is also kept at the end)
    num_workers: PositiveInt = 2  # Ray Train workers
    cpus_per_worker: float = Field(1.0, ge=0)
    gpus_per_worker: float = Field(1.0, gt=0, le=8)  # with use_gpu; a fraction lets trials share a GPU
    deepspeed: DeepSpeedOptions | None = None
    max_failures: int = Field(1, ge=-1)  # worker failures tolerated (restart from the last checkpoint); -1 = any
    strategy: str = "basic"  # data/prompts strategy, the same at training and answering time
    generation: GenerationOptions = Field(default_factory=GenerationOptions)  # answering after training
    # Answering after training: "vllm" serves the adapter with vLLM's LoRA support on the job's GPU
    # (jobs.inference.backends.vllm), falling back to transformers with a warning where it cannot run.
    answer_engine: Literal["hf", "vllm"] = "hf"
    validation: ValidationOptions | None = None  # held-out examples scored while training
