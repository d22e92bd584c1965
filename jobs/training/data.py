"""Training examples in TRL's conversational formats, built from TaskRecords.

- SFT: ``{"prompt": [system, user], "completion": [assistant]}``: the prompt is
  ``data.prompts.build_messages(record, strategy)`` (what the model also sees at
  evaluation time) and the answer is the new-API code in a python block, so the
  loss is on the completion only (TRL's default for prompt-completion data).
- DPO: ``{"prompt", "chosen", "rejected"}``: new-API code chosen, old-API code
  rejected (records without old code give no pair).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from data.prompts import answer_block, build_messages
from data.records import TaskRecord
from jobs.training.options import TrainDataSource


class TrainingDataError(ValueError):
    """The training data named by a spec is missing or unusable."""


def load_sources(sources: Sequence[TrainDataSource]) -> list[TaskRecord]:
    """Records from the spec's ``train_data`` (a teacher set is a ReCode-format file)."""
    from data.registry import load_dataset

    records: list[TaskRecord] = []
    for i, src in enumerate(sources):
        if src.kind == "self":
            continue  # added by training_records
        kind = "recode" if src.kind == "teacher" else src.kind
        try:
            records += load_dataset(kind, src.path, src.limit, split=src.split)
        except (OSError, ValueError) as exc:
            raise TrainingDataError(f"train_data[{i}]: {exc}") from None
    return records


def sft_rows(records: Sequence[TaskRecord], strategy: str = "basic") -> list[dict]:
    return [
        {
            "prompt": build_messages(r, strategy),
            "completion": [{"role": "assistant", "content": answer_block(r.reference)}],
        }
        for r in records if r.reference
    ]


def preference_rows(records: Sequence[TaskRecord], strategy: str = "basic") -> list[dict]:
    return [
        {
            "prompt": build_messages(r, strategy),
            "chosen": [{"role": "assistant", "content": answer_block(r.reference)}],
            "rejected": [{"role": "assistant", "content": answer_block(r.old_code)}],
        }
        for r in records if r.reference and r.old_code and r.old_code.strip() != r.reference.strip()
    ]


def trains_on_eval_records(sources: Sequence[TrainDataSource]) -> bool:
    return not sources or any(src.kind == "self" for src in sources)


def learned_from_scored(learned: Sequence[TaskRecord], scored: Sequence[TaskRecord],
                        scored_ids: Iterable[str] = ()) -> bool:
    """Does a method learn from a record it is scored on: this job's records or any other the run scores
    (``MethodContext.evaluated_ids``)? Such numbers measure memorisation, not migration."""
    ids = {r.id for r in scored} | set(scored_ids)
    return any(r.id in ids for r in learned)


def training_records(sources: Sequence[TrainDataSource], eval_records: Sequence[TaskRecord]) -> list[TaskRecord]:
    """The spec's training records; the evaluated ones where ``train_data`` is empty or names ``self``."""
    own = list(eval_records) if trains_on_eval_records(sources) else []
    return own + load_sources(sources)


def to_dataset(rows: list[dict], what: str):
    """A ``datasets.Dataset``; an empty set is an error naming what was asked for."""
    from datasets import Dataset

    if not rows:
        raise TrainingDataError(f"no {what} examples: the training records have no usable reference/old code")
    return Dataset.from_list(rows)
