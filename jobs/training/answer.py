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


def answer(model, tokenizer, chats: Sequence[list[dict]], gen: GenerationOptions, seed: int,
           strategy: str) -> list[list[str]]:
    from jobs.inference.generation import generate

    return generate(model, tokenizer, chats, gen, seed, strategy)


def method_output(records: Sequence[TaskRecord], outcome: TrainOutcome, options: TrainingOptions,
                  context: MethodContext, chats: Sequence[list[dict]] | None = None) -> MethodOutput:
    """Answers from the trained adapter; a diverged run answers nothing (its diagnosis is the result).

    ``chats``: the prompts to answer, one per record (default: the ``options.strategy`` messages).
    """
    from jobs.training.data import trains_on_eval_records

    metrics = {k: float(outcome.metrics[k]) for k in REPORTED if k in outcome.metrics}
    if trains_on_eval_records(options.train_data):
        metrics["trains_on_eval_records"] = 1.0  # the report warns: these numbers measure memorisation
    summary = {"metrics": outcome.metrics, "diverged": outcome.diverged, "adapter_dir": str(outcome.adapter_dir)}
    diverged = outcome.diverged
    codes: list = [None] * len(records)
    if diverged is None and outcome.adapter_dir is not None and records:
        model, tokenizer = load_adapted(context.model, outcome.adapter_dir, context.use_gpu)
        chats = chats if chats is not None else [build_messages(r, options.strategy) for r in records]
        texts = answer(model, tokenizer, chats, options.generation, context.seed, options.strategy)
        diverged = degenerate_answers([t for samples in texts for t in samples])
        codes = codes_from_texts(texts, options.strategy)
    summary["diverged"] = diverged
    return MethodOutput(
        codes=codes, train_time_s=outcome.train_time_s, metrics=metrics, diverged=diverged,
        files={"training.json": json.dumps(summary, indent=2) + "\n"},
        shows_update=shows_update(options.strategy),
    )
