"""ReCode-format training data (arXiv 2506.20495): old->new code pairs for one dependency update.

One JSON object per line with ``dependency, new_version, description,
update_info, old_code, new_code``. There are no tests: these records train
models and seed the rule miner; execution metrics are not defined for them.
"""

from __future__ import annotations

from pathlib import Path

from data.io import read_jsonl, require
from data.records import TaskRecord, UpdateInfo

_FIELDS = ("dependency", "new_version", "description", "update_info", "old_code", "new_code")


def load_recode(path: str | Path, limit: int | None = None) -> list[TaskRecord]:
    path = Path(path)
    records: list[TaskRecord] = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        for key in _FIELDS:
            require(obj, key, where)
        records.append(
            TaskRecord(
                id=str(obj.get("id", f"{path.stem}-{lineno}")),
                dataset="recode",
                update=UpdateInfo(
                    library=obj["dependency"],
                    version=obj["new_version"],
                    description=obj["description"],
                    docs=obj["update_info"],
                ),
                prompt=(
                    f"Update this code for {obj['dependency']} {obj['new_version']}.\n\n"
                    f"{obj['description']}"
                ),
                reference=obj["new_code"],
                old_code=obj["old_code"],
            )
        )
        if limit is not None and len(records) >= limit:
            break
    return records
