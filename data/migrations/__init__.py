"""The built-in migration set: real API changes across installed libraries (see FORMAT.md)."""

from __future__ import annotations

from pathlib import Path

import yaml

from data.io import DataFormatError, require
from data.migrations.prelude import PRELUDE
from data.records import TaskRecord, UpdateInfo

MIGRATIONS_DIR = Path(__file__).parent
_CASE_FIELDS = ("id", "old_api", "new_api", "since", "change", "note", "old_code", "new_code", "test")

PROMPT = (
    "The following code was written for an older version of {library} and uses "
    "`{old_api}`, which has changed. Rewrite it for the current API.\n\n```python\n{old_code}```\n"
)


def _load_file(path: Path) -> list[TaskRecord]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise DataFormatError(f"{path}{line}: invalid YAML") from None
    if not isinstance(doc, dict):
        raise DataFormatError(f"{path}: expected a mapping with 'library' and 'cases'")
    library = require(doc, "library", str(path))
    cases = require(doc, "cases", str(path), list)
    records = []
    for i, case in enumerate(cases):
        where = f"{path}: cases[{i}]"
        if not isinstance(case, dict):
            raise DataFormatError(f"{where}: expected a mapping")
        for key in _CASE_FIELDS:
            require(case, key, where, (str, int, float) if key == "since" else str)
        records.append(
            TaskRecord(
                id=case["id"],
                dataset="migrations",
                update=UpdateInfo(
                    library=library,
                    old_api=case["old_api"],
                    new_api=case["new_api"],
                    version=str(case["since"]),
                    kind=case["change"],
                    description=case["note"].strip(),
                ),
                prompt=PROMPT.format(library=library, old_api=case["old_api"], old_code=case["old_code"]),
                reference=case["new_code"],
                old_code=case["old_code"],
                tests=(case["test"],),
                setup=PRELUDE,
            )
        )
    return records


def load_migrations(path: str | Path | None = None, limit: int | None = None) -> list[TaskRecord]:
    """Load every ``*.yaml`` under ``path`` (default: the built-in set), sorted by file name."""
    root = Path(path) if path else MIGRATIONS_DIR
    files = [root] if root.is_file() else sorted(root.glob("*.yaml"))
    records: list[TaskRecord] = []
    seen: dict[str, Path] = {}
    for file in files:
        for rec in _load_file(file):
            if rec.id in seen:
                raise DataFormatError(f"{file}: duplicate case id '{rec.id}' (also in {seen[rec.id]})")
            seen[rec.id] = file
            records.append(rec)
    return records[:limit] if limit is not None else records
