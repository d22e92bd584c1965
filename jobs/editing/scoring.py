"""Editing metrics, teacher-forced (as EasyEdit reports them) and by free generation.

Per request:

- efficacy: on the edit prompt; generalization: on its paraphrases;
  locality: on prompts about unrelated APIs.
- teacher-forced (``tf_*``): the prompt followed by the target's tokens; the
  fraction of target tokens that are the argmax given the tokens before them.
  Locality compares the edited model's argmax tokens with the unedited
  model's, over the unrelated answer's positions (EasyEdit's definition).
- free generation (``gen_*``): greedy decoding from the prompt alone; success
  when the continuation starts with the target (efficacy, generalization) or
  is identical to the unedited model's continuation (locality). Teacher
  forcing overstates success: one right token after a wrong one still counts.
"""

from __future__ import annotations

from typing import Sequence

import torch

from jobs.editing.modules import ids, target_ids
from jobs.editing.requests import EditRequest

LOCALITY_TOKENS = 8  # continuation length compared for free-generation locality


def _argmax_on_target(model, tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """For each (prompt, target): (target token ids, the model's argmax at those positions)."""
    out = []
    rows = []
    for prompt, target in pairs:
        p, t = ids(tokenizer, prompt), target_ids(tokenizer, target)
        rows.append((p, t))
    width = max(len(p) + len(t) for p, t in rows)
    batch = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, (p, t) in enumerate(rows):
        seq = p + t
        batch[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
    with torch.no_grad():
        logits = model(input_ids=batch.to(model.device), attention_mask=mask.to(model.device)).logits
    pred = logits.argmax(-1).cpu()
    for i, (p, t) in enumerate(rows):
        out.append((t, pred[i, len(p) - 1:len(p) - 1 + len(t)].tolist()))
    return out


def tf_accuracy(model, tokenizer, pairs: Sequence[tuple[str, str]]) -> list[float]:
    return [sum(a == b for a, b in zip(t, p)) / len(t) for t, p in _argmax_on_target(model, tokenizer, pairs)]


def greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, top_k=None, top_p=None,
                                 temperature=None, pad_token_id=tokenizer.pad_token_id)
    finally:
        tokenizer.padding_side = side
    return tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def _starts(text: str, target: str) -> bool:
    return text.strip().startswith(target.strip())


def locality_reference(model, tokenizer, requests: Sequence[EditRequest]) -> dict[str, list]:
    """What the unedited model says on the locality prompts (taken before editing)."""
    pairs = [lp for r in requests for lp in r.locality]
    if not pairs:
        return {"tf": [], "gen": []}
    return {"tf": [p for _, p in _argmax_on_target(model, tokenizer, pairs)],
            "gen": greedy(model, tokenizer, [p for p, _ in pairs], LOCALITY_TOKENS)}


def score(model, tokenizer, requests: Sequence[EditRequest], reference: dict[str, list]) -> list[dict[str, float]]:
    """Per-request metrics (see the module docstring); ``reference`` from :func:`locality_reference`."""
    eff = [(r.text(), r.target_new) for r in requests]
    par = [(r.text(p), r.target_new) for r in requests for p in r.paraphrases]
    loc = [lp for r in requests for lp in r.locality]
    tf_eff = tf_accuracy(model, tokenizer, eff)
    tf_par = tf_accuracy(model, tokenizer, par) if par else []
    longest = max(len(target_ids(tokenizer, r.target_new)) for r in requests) + 2
    gen_eff = greedy(model, tokenizer, [p for p, _ in eff], longest)
    gen_par = greedy(model, tokenizer, [p for p, _ in par], longest) if par else []
    tf_loc = [p for _, p in _argmax_on_target(model, tokenizer, loc)] if loc else []
    gen_loc = greedy(model, tokenizer, [p for p, _ in loc], LOCALITY_TOKENS) if loc else []
    rows = []
    pi = li = 0
    for i, r in enumerate(requests):
        npar, nloc = len(r.paraphrases), len(r.locality)
        row = {"tf_efficacy": tf_eff[i], "gen_efficacy": float(_starts(gen_eff[i], r.target_new))}
        if npar:
            row["tf_generalization"] = sum(tf_par[pi:pi + npar]) / npar
            row["gen_generalization"] = sum(_starts(g, r.target_new) for g in gen_par[pi:pi + npar]) / npar
        if nloc:
            agree = [sum(a == b for a, b in zip(post, pre)) / max(1, len(pre))
                     for post, pre in zip(tf_loc[li:li + nloc], reference["tf"][li:li + nloc])]
            row["tf_locality"] = sum(agree) / nloc
            row["gen_locality"] = sum(a == b for a, b in zip(gen_loc[li:li + nloc],
                                                             reference["gen"][li:li + nloc])) / nloc
        pi, li = pi + npar, li + nloc
        rows.append(row)
    return rows


def average(rows: Sequence[dict[str, float]], prefix: str = "") -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        out[prefix + k] = sum(vals) / len(vals)
    return out
