"""Dataset kinds: one line each, mapping a kind to its loader and default file.

A loader is ``load(path, limit) -> list[TaskRecord]``. ``default_path`` is used
when a spec gives no ``path``; paths under the benchmark data directory come
from :func:`data_dir` (``$APIMIG_DATA_DIR``, default ``../shared/data``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data.codeupdatearena import load_codeupdatearena
from data.gitchameleon import load_gitchameleon
from data.humaneval import load_humaneval
from data.migrations import load_migrations
from data.recode import load_recode
from data.records import TaskRecord

DATA_DIR_ENV = "APIMIG_DATA_DIR"


def data_dir() -> Path:
    """Where the public benchmark files live (they are never copied into the project)."""
    return Path(os.environ.get(DATA_DIR_ENV, "../shared/data"))


@dataclass(frozen=True)
class DatasetKind:
    load: Callable[..., list[TaskRecord]]
    default_path: Callable[[], Path | None]  # None: the loader has a built-in source
    has_old_code: bool = False
    requires_path: bool = False  # no built-in source: a spec must name the file


DATASETS: dict[str, DatasetKind] = {
    "migrations": DatasetKind(load_migrations, lambda: None, has_old_code=True),
    "codeupdatearena": DatasetKind(load_codeupdatearena, lambda: data_dir() / "codeupdatearena" / "arena.dev.jsonl"),
    "gitchameleon": DatasetKind(load_gitchameleon, lambda: data_dir() / "gitchameleon" / "dataset.dev.jsonl"),
    "humaneval": DatasetKind(load_humaneval, lambda: None),
    "recode": DatasetKind(load_recode, lambda: None, has_old_code=True, requires_path=True),
}


def resolve_path(kind: str, path: str | Path | None) -> Path | None:
    if path is not None:
        return Path(os.path.expandvars(os.path.expanduser(str(path))))
    return DATASETS[kind].default_path()


def load_dataset(
    kind: str, path: str | Path | None = None, limit: int | None = None, control: str | None = None,
    split: str | None = None,
) -> list[TaskRecord]:
    extra = {}
    if control is not None:  # only CodeUpdateArena defines a control condition (its SPass)
        extra["control"] = control
    if split is not None:  # only the built-in migrations have splits
        extra["split"] = split
    return DATASETS[kind].load(resolve_path(kind, path), limit, **extra)
