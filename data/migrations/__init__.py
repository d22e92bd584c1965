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


_VARIANT_FIELDS = ("old_code", "new_code", "test")
SPLITS = (None, "train", "test")


def _record(library: str, case: dict, variant: int, old_code: str, new_code: str, test: str) -> TaskRecord:
    # Variant 0 keeps the bare case id (ids of existing runs stay valid); variant i is "<id>#<i+1>".
    rid = case["id"] if variant == 0 else f"{case['id']}#{variant + 1}"
    return TaskRecord(
        id=rid,
        dataset="migrations",
        update=UpdateInfo(
            library=library,
            old_api=case["old_api"],
            new_api=case["new_api"],
            version=str(case["since"]),
            kind=case["change"],
            description=case["note"].strip(),
        ),
        prompt=PROMPT.format(library=library, old_api=case["old_api"], old_code=old_code),
        reference=new_code,
        old_code=old_code,
        tests=(test,),
        setup=PRELUDE,
        meta={"case": case["id"], "variant": variant},
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
        records.append(_record(library, case, 0, case["old_code"], case["new_code"], case["test"]))
        variants = case.get("variants", [])
        if not isinstance(variants, list):
            raise DataFormatError(f"{where}: field 'variants' should be a list")
        for j, variant in enumerate(variants, start=1):
            vwhere = f"{where}.variants[{j - 1}]"
            if not isinstance(variant, dict):
                raise DataFormatError(f"{vwhere}: expected a mapping")
            for key in _VARIANT_FIELDS:
                require(variant, key, vwhere)
            records.append(_record(library, case, j, variant["old_code"], variant["new_code"], variant["test"]))
    return records


def load_migrations(
    path: str | Path | None = None, limit: int | None = None, split: str | None = None
) -> list[TaskRecord]:
    """Load every ``*.yaml`` under ``path`` (default: the built-in set), sorted by file name.

    ``split``: None = every variant of every case; ``"train"`` = variant 0 of each case (what a
    rule miner may learn from); ``"test"`` = the extra variants only (held out from mining).
    """
    if split not in SPLITS:
        raise DataFormatError(f"unknown split '{split}' (known: train, test, or none for all)")
    root = Path(path) if path else MIGRATIONS_DIR
    files = [root] if root.is_file() else sorted(root.glob("*.yaml"))
    records: list[TaskRecord] = []
    seen: dict[str, Path] = {}
    for file in files:
        for rec in _load_file(file):
            if rec.id in seen:
                raise DataFormatError(f"{file}: duplicate case id '{rec.id}' (also in {seen[rec.id]})")
            seen[rec.id] = file
            if split == "train" and rec.meta["variant"] != 0 or split == "test" and rec.meta["variant"] == 0:
                continue
            records.append(rec)
    return records[:limit] if limit is not None else records
