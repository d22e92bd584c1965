"""Key statistics: the uncentred second moment C = E[k k^T] of a rewrite module's inputs.

ROME and MEMIT use C to keep an edit away from the keys the model sees in
ordinary text. The papers estimate it on 100k Wikipedia samples (hours); here
the default corpus is general code no benchmark scores (documented functions
of the Python standard library: ``data.corpus.general_texts``; the built-in
migrations and HumanEval would leak into what is measured), a sample being one text of at most ``mom2_max_length`` tokens, and
``mom2_n_samples`` caps how many are used. Results are cached on disk, keyed by
model (name and a weight fingerprint), module, corpus and sample count, and
written atomically under a file lock, so parallel edit tasks compute each
matrix once.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Sequence

import torch

from data.io import atomic_write_bytes
from jobs.editing.hparams import EditHParams
from jobs.editing.modules import StopForward, captured

STATS_ENV = "APIMIG_STATS_DIR"
_MEMORY: dict[str, torch.Tensor] = {}


def load_corpus(name: str) -> list[str]:
    """``code`` (built in), a ``.jsonl`` file (``text``/``content``/``code`` field per row) or a text file."""
    if name == "code":
        from data.corpus import general_texts

        return general_texts()
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"hparams.mom2_dataset: '{name}' is neither 'code' nor an existing file")
    if path.suffix == ".jsonl":
        from data.io import read_jsonl

        out = []
        for lineno, row in read_jsonl(path):
            text = next((row[k] for k in ("text", "content", "code") if isinstance(row.get(k), str)), None)
            if text is None:
                raise ValueError(f"{path}:{lineno}: expected a 'text', 'content' or 'code' string field")
            out.append(text)
        return out
    return [block for block in path.read_text(encoding="utf-8").split("\n\n\n") if block.strip()]


def stats_dir(hp: EditHParams) -> Path:
    if hp.stats_dir:
        return Path(hp.stats_dir)
    from jobs.inference.models import cache_root

    return Path(os.environ.get(STATS_ENV) or cache_root().parent / "stats")


def fingerprint(model) -> str:
    """A cheap identity of the weights: the first elements of every parameter (two fine-tunes of one base differ)."""
    h = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _key(model, module_name: str, hp: EditHParams) -> str:
    corpus = hp.mom2_dataset
    if corpus == "code":
        corpus = "code-v3"  # v3: stdlib functions, disjoint from every benchmark (data.corpus.general_texts)
    else:
        st = Path(corpus).stat()
        corpus = f"{Path(corpus).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    parts = [fingerprint(model), module_name, corpus, hp.mom2_n_samples, hp.mom2_max_length, hp.mom2_dtype]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def second_moments(model, tokenizer, module_names: Sequence[str], hp: EditHParams,
                   batch_size: int = 16) -> dict[str, torch.Tensor]:
    """C for each named module (float32, on CPU), from memory, the disk cache, or one pass over the corpus."""
    keys = {n: _key(model, n, hp) for n in module_names}
    root = stats_dir(hp)
    model_dir = root / str(getattr(model.config, "_name_or_path", "model")).strip("/").replace("/", "_")[-80:]
    out: dict[str, torch.Tensor] = {}
    missing = []
    for name, key in keys.items():
        path = model_dir / f"{name}-{key}.pt"
        if key in _MEMORY:
            out[name] = _MEMORY[key]
        elif path.is_file():
            out[name] = _MEMORY[key] = torch.load(path, map_location="cpu")
        else:
            missing.append(name)
    if not missing:
        return out
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one computer per model; the others wait and read its files
        todo = []
        for name in missing:
            path = model_dir / f"{name}-{keys[name]}.pt"
            if path.is_file():
                out[name] = _MEMORY[keys[name]] = torch.load(path, map_location="cpu")
            else:
                todo.append(name)
        if todo:
            computed = _compute(model, tokenizer, todo, hp, batch_size)
            for name, mom in computed.items():
                buf = io.BytesIO()
                torch.save(mom, buf)
                atomic_write_bytes(model_dir / f"{name}-{keys[name]}.pt", buf.getvalue())
                out[name] = _MEMORY[keys[name]] = mom
    return out


def _compute(model, tokenizer, names: Sequence[str], hp: EditHParams, batch_size: int) -> dict[str, torch.Tensor]:
    dtype = getattr(torch, hp.mom2_dtype)
    texts = load_corpus(hp.mom2_dataset)[: hp.mom2_n_samples]
    if not texts:
        raise ValueError(f"hparams.mom2_dataset: '{hp.mom2_dataset}' has no text")
    max_length = min(hp.mom2_max_length, getattr(model.config, "max_position_embeddings", None) or hp.mom2_max_length)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=max_length).to(model.device)
            mask = batch["attention_mask"].bool()
            with torch.no_grad(), captured(model, names, "input", stop=True) as store, suppress(StopForward):
                model(**batch)
            for name in names:
                keys = store[name][mask].to(dtype)  # (tokens, dim), padding dropped
                sums[name] = sums.get(name, 0) + keys.T @ keys
            count += int(mask.sum())
    finally:
        tokenizer.padding_side = side
    return {name: (s / count).float().cpu() for name, s in sums.items()}
