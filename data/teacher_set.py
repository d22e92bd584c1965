"""Teacher-made data: parsing a teacher's old/new code pairs and the two files the teacher job writes.

- ``pairs.jsonl``: ReCode format (``data.recode.load_recode`` reads it): one
  object per kept pair with ``dependency, new_version, description,
  update_info, old_code, new_code``, plus ``id, old_api, new_api, test`` and
  ``source`` (the record whose update the pair illustrates).
- ``distill.jsonl``: SFT targets, one object per kept pair with ``id``,
  ``messages`` (the chat the student sees, built by ``data.prompts``) and
  ``completion`` (the teacher's new code in a fenced python block).
  :func:`load_distillation` reads it back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from data.io import DataFormatError, read_jsonl, require
from data.records import TaskRecord, UpdateInfo

_EXAMPLE = re.compile(r"^#+\s*Example\b.*$", re.M | re.I)
_PART = re.compile(r"^\s*(old|new|test)\s*:?\s*\n+```[ \t]*[A-Za-z0-9_+-]*[^\n]*\n(.*?)```", re.M | re.I | re.S)


@dataclass(frozen=True)
class CodePair:
    old_code: str
    new_code: str
    test: str = ""


def parse_pairs(text: str) -> list[CodePair]:
    """Every ``### Example`` section with an Old and a New block (Test optional) in a teacher's reply."""
    pairs = []
    for chunk in _EXAMPLE.split(text)[1:]:
        parts = {label.lower(): body.strip("\n") + "\n" for label, body in _PART.findall(chunk)}
        if parts.get("old", "").strip() and parts.get("new", "").strip():
            test = parts.get("test", "")
            pairs.append(CodePair(parts["old"], parts["new"], test if test.strip() else ""))
    return pairs


def recode_row(pair: CodePair, update: UpdateInfo, pair_id: str, source: str) -> dict[str, Any]:
    return {
        "id": pair_id,
        "dependency": update.library,
        "new_version": update.version or "",
        "description": update.description,
        "update_info": update.docs or update.description,
        "old_code": pair.old_code,
        "new_code": pair.new_code,
        "old_api": update.old_api,
        "new_api": update.new_api,
        "test": pair.test,
        "source": source,
    }


def pair_record(row: dict[str, Any]) -> TaskRecord:
    """A kept pair as the migration task a student is trained on (the built-in set's prompt wording)."""
    from data.migrations import PROMPT

    update = UpdateInfo(library=row["dependency"], old_api=row.get("old_api"), new_api=row.get("new_api"),
                        version=row["new_version"], description=row["description"], docs=row["update_info"])
    prompt = PROMPT.format(library=update.library, old_api=update.old_api or "an older API",
                           old_code=row["old_code"])
    return TaskRecord(id=row["id"], dataset="teacher", update=update, prompt=prompt, reference=row["new_code"],
                      old_code=row["old_code"], tests=(row["test"],) if row.get("test") else ())


def distill_row(pair_id: str, messages: list[dict], new_code: str) -> dict[str, Any]:
    return {"id": pair_id, "messages": messages, "completion": f"```python\n{new_code.rstrip()}\n```"}


def to_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def load_distillation(path: str | Path) -> list[dict[str, Any]]:
    """``{id, messages, completion}`` rows of a distillation file (errors name file:line)."""
    path = Path(path)
    rows = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        messages = require(obj, "messages", where, list)
        require(obj, "completion", where)
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                   and isinstance(m.get("content"), str) for m in messages):
            raise DataFormatError(f"{where}: 'messages' should be a list of {{role, content}} objects")
        rows.append(obj)
    return rows
