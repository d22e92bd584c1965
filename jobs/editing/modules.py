"""Reaching inside a decoder: named modules, their inputs/outputs, token positions, context prefixes.

Everything works in token space: a prompt is tokenized once and the target's
tokens are appended, so label positions never depend on how a BPE merges
across the prompt/target boundary.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

# Prefix sampling starts: code-flavoured, where ROME samples prose after "The", "Therefore", ...
_TEMPLATE_STARTS = ("#", "import", "def", "x =", "return")


def module(model, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"hparams: module '{name}' not found in {type(model).__name__}") from None


def weight_is_transposed(mod: torch.nn.Module) -> bool:
    """GPT-2's Conv1D stores weights as (in, out); nn.Linear as (out, in)."""
    return type(mod).__name__ == "Conv1D"


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def target_ids(tokenizer, target: str) -> list[int]:
    return tokenizer(target, add_special_tokens=False)["input_ids"]


def subject_index(tokenizer, prefix: str, subject: str, suffix: str, fact_token: str) -> int:
    """Position of the fact token in ``ids(prefix + subject + suffix)``: the subject's last token, or the last."""
    if fact_token == "last":
        return len(ids(tokenizer, prefix + subject + suffix)) - 1
    return len(ids(tokenizer, prefix + subject)) - 1


@dataclass(frozen=True)
class Row:
    """One sequence of a batch: its token ids, the fact-token position, and labels (-100 = no loss)."""

    input_ids: list[int]
    index: int
    labels: list[int] | None = None


def make_row(tokenizer, template: str, prompt: str, subject: str, fact_token: str,
             target: Sequence[int] = ()) -> Row:
    """``template`` ("{}" or "<prefix> {}") wraps ``prompt`` (with "{}" for the subject); ``target`` is appended."""
    text = template.replace("{}", prompt)
    at = text.index("{}")
    prefix, suffix = text[:at], text[at + 2:]
    base = ids(tokenizer, prefix + subject + suffix)
    index = subject_index(tokenizer, prefix, subject, suffix, fact_token)
    if not target:
        return Row(base, index)
    seq = base + list(target[:-1])
    labels = [-100] * len(seq)
    for j, tok in enumerate(target):
        labels[len(base) - 1 + j] = tok
    return Row(seq, index, labels)


def pad(rows: Sequence[Row], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded batch (positions stay as in the unpadded rows)."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids)
        mask[i, :n] = 1
        if r.labels is not None:
            labels[i, :n] = torch.tensor(r.labels)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class StopForward(Exception):
    """Raised by :func:`captured` with ``stop=True`` once every named module has been seen."""


@contextmanager
def captured(model, names: Sequence[str], what: str = "output", stop: bool = False
             ) -> Iterator[dict[str, torch.Tensor]]:
    """Record each named module's input (first positional arg) or output during forwards in the block.

    ``stop``: end each forward with :class:`StopForward` as soon as every module was recorded (as ROME's
    ``nethook.Trace(stop=True)``): statistics of layer 6 need neither the layers above it nor the LM head.
    The caller catches it (``with suppress(StopForward): model(...)``).
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def record(name: str, value: torch.Tensor) -> None:
        store[name] = value
        if stop and len(store) == len(names):
            raise StopForward

    for name in names:
        mod = module(model, name)
        if what == "input":
            handles.append(mod.register_forward_pre_hook(lambda m, args, n=name: record(n, args[0])))
        else:
            handles.append(mod.register_forward_hook(lambda m, a, out, n=name: record(n, _first(out))))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def output_edited(model, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the named module's output (its first element, for modules returning tuples) by ``fn(output)``."""
    def hook(m, args, out):
        if isinstance(out, tuple):
            return (fn(out[0]),) + out[1:]
        return fn(out)

    handle = module(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def rows_at(model, tokenizer, rows: Sequence[Row], name: str, what: str) -> torch.Tensor:
    """The named module's input or output at each row's fact token: (len(rows), dim)."""
    batch = pad(rows, tokenizer.pad_token_id, model.device)
    with torch.no_grad(), captured(model, [name], what) as store:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = store[name]
    return torch.stack([hidden[i, r.index] for i, r in enumerate(rows)]).float()


def mean_key(model, tokenizer, prompt: str, subject: str, templates: Sequence[str], name: str,
             fact_token: str) -> torch.Tensor:
    """ROME's k*: the rewrite module's input at the fact token, averaged over the context prefixes."""
    rows = [make_row(tokenizer, t, prompt, subject, fact_token) for t in templates]
    return rows_at(model, tokenizer, rows, name, "input").mean(0)


def context_templates(model, tokenizer, length_params: Sequence[Sequence[int]], seed: int = 0) -> list[str]:
    """``["{}"]`` plus prefixes sampled from the model (``[length, count]`` pairs), each ending in "{}".

    Sampling is seeded (and leaves the global RNG as it was), so every copy of
    the model gets the same prefixes: serial and parallel runs then edit alike.
    """
    out = ["{}"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for length, count in length_params:
            starts = [_TEMPLATE_STARTS[i % len(_TEMPLATE_STARTS)] for i in range(count)]
            side = tokenizer.padding_side
            tokenizer.padding_side = "left"
            try:
                batch = tokenizer(starts, return_tensors="pt", padding=True).to(model.device)
                with torch.no_grad():
                    gen = model.generate(**batch, max_new_tokens=length, do_sample=True, top_k=5,
                                         pad_token_id=tokenizer.pad_token_id)
            finally:
                tokenizer.padding_side = side
            texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
            # Braces would be read as the subject's slot.
            out += [t.replace("{", " ").replace("}", " ").strip() + "\n{}" for t in texts]
    return out


@contextmanager
def frozen(model) -> Iterator[None]:
    """No parameter gradients inside the block (the editors optimise a separate delta vector)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
