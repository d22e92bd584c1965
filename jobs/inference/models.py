"""Models and tokenizers: the spec's ``model`` section turned into something transformers loads.

``model.name`` is a hub id, a local directory, or ``tiny``. Hubs cannot be
reached from the machines this project is tested on, so ``tiny`` is a model
apimig builds itself: a byte-level BPE tokenizer trained on code the project
ships (the built-in migration set, HumanEval), with a ChatML chat template
like Qwen2.5's, and a small Qwen2-architecture model with seeded random
weights. It is saved once, in Hugging Face format, to a cache directory keyed
by its recipe, so every process and every library (TRL, PEFT, the editors)
loads it with ``from_pretrained(model_path(spec))`` like any other model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from data.corpus import code_texts

TINY = "tiny"
CACHE_ENV = "APIMIG_MODEL_CACHE"

# The recipe: changing any of it builds a new cache entry.
TINY_CONFIG = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "seed": 0,
    "recipe": 1,
}

# Qwen2.5's chat format, so prompts render the same way for the tiny model and the real ones.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class ModelSpec(BaseModel):
    """A model section: the experiment's ``model:`` and any other model a method names (distill's teacher).

    Methods receive it as a plain dict (``MethodContext.model``, ``model_dump()``), which is what
    :func:`load_model` and :func:`model_path` take.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(TINY, min_length=1)  # "tiny" (built locally), a hub id or a local path
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "apimig" / "models")


def model_path(model: dict[str, Any] | str) -> str:
    """What ``from_pretrained`` takes for this spec: the tiny model's directory (built on first use), else the name."""
    name = model if isinstance(model, str) else model.get("name", TINY)
    return str(tiny_model_dir()) if name == TINY else name


def tiny_model_dir(root: Path | None = None) -> Path:
    """The tiny model's directory, built once per recipe (a file lock serialises concurrent builders)."""
    root = root or cache_root()
    key = _tiny_key()
    target = root / f"tiny-{key}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".tiny-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{key}-", dir=root))
            try:
                _build_tiny(tmp, code_texts())
                tmp.rename(target)  # atomic: readers see a whole model or none
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


@cache
def _tiny_key() -> str:
    """The recipe and the tokenizer's training text: an edited corpus never reuses a stale build."""
    recipe = json.dumps(TINY_CONFIG, sort_keys=True) + "\0".join(code_texts())
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _build_tiny(out: Path, corpus: list[str]) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    cfg = dict(TINY_CONFIG)
    seed = cfg.pop("seed")
    cfg.pop("recipe")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg["vocab_size"], special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=cfg["max_position_embeddings"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)

    cfg["vocab_size"] = len(tokenizer)
    torch.manual_seed(seed)
    config = Qwen2Config(
        **cfg,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)


def load_tokenizer(model: dict[str, Any] | str):
    from transformers import AutoTokenizer

    spec = {"name": model} if isinstance(model, str) else model
    tokenizer = AutoTokenizer.from_pretrained(model_path(spec), revision=spec.get("revision"))
    if tokenizer.pad_token is None:  # many causal LMs ship none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(name: str | None, use_gpu: bool):
    """``auto``: bf16 on a GPU that supports it, fp32 on CPU (CPU half precision is slow and fragile)."""
    import torch

    if name in (None, "auto"):
        return torch.bfloat16 if use_gpu and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def load_model(model: dict[str, Any] | str, *, use_gpu: bool = False):
    """``(model, tokenizer)`` for a spec's model section, on the GPU when asked and available."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = {"name": model} if isinstance(model, str) else model
    use_gpu = use_gpu and torch.cuda.is_available()
    lm = AutoModelForCausalLM.from_pretrained(
        model_path(spec), revision=spec.get("revision"), dtype=torch_dtype(spec.get("dtype"), use_gpu)
    )
    return lm.to("cuda" if use_gpu else "cpu"), load_tokenizer(spec)
