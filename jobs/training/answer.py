"""After training: the adapter answers the evaluated records, and the outcome becomes a MethodOutput."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from data.prompts import build_messages, shows_update
from data.records import TaskRecord
from jobs.inference.answers import codes_from_texts
from jobs.inference.generation import GenerationOptions
from jobs.methods.registry import MethodContext, MethodOutput
from jobs.training.guards import degenerate_answers
from jobs.training.options import TrainingOptions
from jobs.training.runner import TrainOutcome

REPORTED = ("trainable_params", "total_params", "train_loss", "global_step", "resumed_from_step", "train_runtime",
            "num_workers")


def load_adapted(model: dict, adapter_dir: Path, use_gpu: bool):
    """(base model + adapter, tokenizer), ready to generate."""
    from peft import PeftModel

    from jobs.inference.models import load_model

    base, tokenizer = load_model(model, use_gpu=use_gpu)
    # Merged into the base weights: generation then costs what the base model costs (an unmerged
    # adapter adds two small matmuls per adapted layer and token, ~2x on a CPU).
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload(), tokenizer


def adapter_answers(model: dict, adapter_dir: Path, chats: Sequence[list[dict]], gen: GenerationOptions,
                    seed: int, strategy: str, use_gpu: bool, engine: str = "hf", rank: int = 16,
                    records: Sequence[TaskRecord] | None = None
                    ) -> tuple[list[list[str]], str, list[dict[str, float]] | None]:
    """Load base + adapter and answer ``chats`` (the body of the GPU task below): (answers, engine used,
    the likelihood scorecard of ``records`` after the same chats, where records are given and the
    transformers model answered).

    ``engine="vllm"`` serves the adapter unmerged with vLLM's LoRA support where vLLM can run, and
    falls back to transformers (with a warning) where it cannot."""
    from jobs.inference.generation import generate

    if engine == "vllm":
        from jobs.inference.backends.vllm import chat_answers, vllm_unavailable, warn_fallback

        reason = vllm_unavailable(use_gpu)
        if reason is None:
            from jobs.inference.backends.vllm import engine as vllm_engine

            llm = vllm_engine(model, seed=seed, gpu_memory_utilization=0.85, max_lora_rank=rank)
            return chat_answers(llm, chats, gen, seed, adapter_dir), "vllm", None
        warn_fallback("answering with the trained adapter", reason)
    lm, tokenizer = load_adapted(model, adapter_dir, use_gpu)
    answers = generate(lm, tokenizer, chats, gen, seed, strategy)
    if records is None:
        return answers, "hf", None
    from jobs.inference.likelihood import score_records

    return answers, "hf", score_records(lm, tokenizer, records, chats)


def answer_with_adapter(context: MethodContext, adapter_dir: Path, chats: Sequence[list[dict]],
                        gen: GenerationOptions, strategy: str, engine: str = "hf", rank: int = 16,
                        records: Sequence[TaskRecord] | None = None
                        ) -> tuple[list[list[str]], str, list[dict[str, float]] | None]:
    """The adapter's answers. With ``use_gpu`` under Ray they come from a task that holds one GPU of its
    own, asked for only now: the job's task holds none, so on a one-GPU machine the Ray Train workers
    had the GPU while training and the answers get it after."""
    args = (context.model, adapter_dir, list(chats), gen, context.seed, strategy, context.use_gpu, engine, rank,
            list(records) if records is not None else None)
    import ray

    if context.use_gpu and ray.is_initialized():
        task = ray.remote(num_gpus=1, num_cpus=1, max_retries=0)(adapter_answers)
        return ray.get(task.options(name=f"answer {context.method or 'adapter'}").remote(*args))
    return adapter_answers(*args)


def method_output(records: Sequence[TaskRecord], outcome: TrainOutcome, options: TrainingOptions,
                  context: MethodContext, chats: Sequence[list[dict]] | None = None) -> MethodOutput:
    """Answers from the trained adapter; a diverged run answers nothing (its diagnosis is the result).

    ``chats``: the prompts to answer, one per record (default: the ``options.strategy`` messages).
    """
    from jobs.training.data import learned_from_scored, load_sources, trains_on_eval_records

    metrics = {k: float(outcome.metrics[k]) for k in REPORTED if k in outcome.metrics}
    if trains_on_eval_records(options.train_data) or learned_from_scored(load_sources(options.train_data), records,
                                                                         context.evaluated_ids):
        metrics["trains_on_eval_records"] = 1.0  # the report warns: these numbers measure memorisation
    summary = {"metrics": outcome.metrics, "diverged": outcome.diverged, "adapter_dir": str(outcome.adapter_dir)}
    diverged = outcome.diverged
    codes: list = [None] * len(records)
    scores = None
    if diverged is None and outcome.adapter_dir is not None and records:
        chats = chats if chats is not None else [build_messages(r, options.strategy) for r in records]
        texts, used, scores = answer_with_adapter(context, outcome.adapter_dir, chats, options.generation,
                                                  options.strategy, options.answer_engine, options.adapter.rank,
                                                  records if context.scorecard else None)
        if used != options.answer_engine:
            metrics["answer_engine_fallback"] = 1.0
        diverged = degenerate_answers([t for samples in texts for t in samples])
        codes = codes_from_texts(texts, options.strategy)
    summary["diverged"] = diverged
    return MethodOutput(
        codes=codes, train_time_s=outcome.train_time_s, metrics=metrics, diverged=diverged,
        files={"training.json": json.dumps(summary, indent=2) + "\n"},
        shows_update=shows_update(options.strategy), scores=scores,
    )
