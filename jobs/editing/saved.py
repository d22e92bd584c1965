"""An edit made once and reused: the merged weight deltas and what was measured when they were made.

A method whose edits come from fixed records (``edit_data``) makes the same edit for every dataset it is
scored on, like a trainer with its own ``train_data``; its jobs share a directory (``MethodContext.shared_dir``)
and the first one saves the edit here, so the others only add the deltas to the model. Written to a
temporary directory and renamed, so a half-saved edit never exists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

DELTAS = "deltas.safetensors"
OUTCOME = "outcome.json"


@dataclass
class SavedEdit:
    deltas: dict[str, torch.Tensor]  # parameter name -> summed change over every batch
    metrics: dict[str, float]
    files: dict[str, str]
    edit_time_s: float


def load(directory: Path) -> SavedEdit | None:
    if not (directory / OUTCOME).is_file():
        return None
    from safetensors.torch import load_file

    outcome = json.loads((directory / OUTCOME).read_text(encoding="utf-8"))
    deltas = load_file(str(directory / DELTAS)) if (directory / DELTAS).is_file() else {}
    return SavedEdit(deltas, outcome["metrics"], outcome["files"], outcome["edit_time_s"])


def save(directory: Path, edit: SavedEdit) -> None:
    from safetensors.torch import save_file

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        if edit.deltas:
            save_file({k: v.detach().cpu().contiguous() for k, v in edit.deltas.items()}, str(tmp / DELTAS))
        (tmp / OUTCOME).write_text(json.dumps({"metrics": edit.metrics, "files": edit.files,
                                               "edit_time_s": edit.edit_time_s}), encoding="utf-8")
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def apply(model, deltas: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in deltas.items():
            params[name].add_(d.to(params[name].device, params[name].dtype))
