"""Unlearning the old API: gradient ascent or NPO on old-API completions, with a retain set.

The forget set is (prompt, completion) pairs where the completion uses the
old API (the request's old ground truth after its prompt, and a record's
``old_code`` after its chat prompt); the retain set is unrelated pairs
(locality facts, HumanEval solutions) whose likelihood should stay put.

- ``ga``: minimise -NLL(forget) + w * NLL(retain) (plain gradient ascent on the
  forget set, which diverges if run long: keep ``unlearn_steps`` small);
- ``npo`` (Zhang et al., 2024): minimise
  -(2/beta) E[log sigmoid(-beta (log p(y|x) - log p_ref(y|x)))] + w * NLL(retain),
  whose gradient vanishes as the forget likelihood falls below the reference,
  so it does not collapse the model.

Only the MLPs of ``unlearn_layers`` (all layers when unset) are trained.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from jobs.editing.hparams import EditHParams

Pair = tuple[str, str]  # (prompt, completion)
CHUNK = 4  # pairs per forward/backward: a whole forget + retain set at once took ~10 GB for a 135M model


def _batch(tokenizer, pairs: Sequence[Pair], device):
    rows, labels = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, :len(r)] = torch.tensor(r)
        lab[i, :len(l)] = torch.tensor(l)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device), lab.to(device)


def sequence_logprobs(model, tokenizer, pairs: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of completion token log-probs, completion lengths)`` per pair (with grad if enabled)."""
    ids, mask, labels = _batch(tokenizer, pairs, model.device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    tgt = labels[:, 1:]
    logp = torch.gather(F.log_softmax(logits, -1), 2, tgt.clamp(min=0).unsqueeze(2)).squeeze(2)
    keep = tgt != -100
    return (logp * keep).sum(1), keep.sum(1)


def mean_logprob(model, tokenizer, pairs: Sequence[Pair]) -> float:
    """Mean over pairs of the per-token completion log-likelihood (no grad; a chunk at a time)."""
    if not pairs:
        return float("nan")
    values = []
    with torch.no_grad():
        for start in range(0, len(pairs), CHUNK):
            lp, n = sequence_logprobs(model, tokenizer, pairs[start:start + CHUNK])
            values += (lp / n).tolist()
    return sum(values) / len(values)


def trainable(model, hp: EditHParams) -> list[tuple[str, torch.nn.Parameter]]:
    layers = hp.unlearn_layers if hp.unlearn_layers is not None else range(model.config.num_hidden_layers)
    prefixes = tuple(hp.mlp_module_tmp.format(l) + "." for l in layers)
    return [(n, p) for n, p in model.named_parameters() if n.startswith(prefixes)]


def apply_unlearning(model, tokenizer, forget: Sequence[Pair], retain: Sequence[Pair],
                     hp: EditHParams) -> dict[str, torch.Tensor]:
    """Train ``model`` in place; returns ``{parameter name: delta}`` (CPU) for the trained parameters."""
    if not forget:
        raise ValueError("unlearn: empty forget set (no request has old-API completions)")
    params = trainable(model, hp)
    if not params:
        raise ValueError(f"hparams.unlearn_layers: no parameters under '{hp.mlp_module_tmp}'")
    before = {n: p.detach().clone() for n, p in params}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(False)
    for _, p in params:
        p.requires_grad_(True)
    was_training = model.training
    model.eval()  # no dropout: the same batches give the same update everywhere
    with torch.no_grad():
        ref = torch.cat([sequence_logprobs(model, tokenizer, forget[i:i + CHUNK])[0]
                         for i in range(0, len(forget), CHUNK)])
    opt = torch.optim.AdamW([p for _, p in params], lr=hp.unlearn_lr, weight_decay=0.0)
    retain_weight = hp.unlearn_retain_weight if retain else 0.0
    try:
        for _ in range(hp.unlearn_steps):
            # Both terms are means over pairs, so a few pairs at a time, each backward on its own, give the same
            # gradient as one batch: memory is then one chunk's logits (x vocabulary), not every pair's at once.
            opt.zero_grad()
            total = 0.0
            for start in range(0, len(forget), CHUNK):
                chunk = forget[start:start + CHUNK]
                lp, n = sequence_logprobs(model, tokenizer, chunk)
                if hp.unlearn_loss == "ga":
                    per_pair = lp / n  # ascent on the NLL = descent on the log-likelihood
                else:
                    margin = lp - ref[start:start + CHUNK]
                    per_pair = -(2.0 / hp.unlearn_beta) * F.logsigmoid(-hp.unlearn_beta * margin)
                loss = per_pair.sum() / len(forget)
                loss.backward()
                total += loss.item()
            for start in range(0, len(retain) if retain_weight else 0, CHUNK):
                rlp, rn = sequence_logprobs(model, tokenizer, retain[start:start + CHUNK])
                loss = retain_weight * (-(rlp / rn)).sum() / len(retain)
                loss.backward()
                total += loss.item()
            if not math.isfinite(total):
                raise FloatingPointError("unlearn: loss became non-finite (lower unlearn_lr or unlearn_steps)")
            opt.step()
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    return {n: (p.detach() - before[n]).cpu() for n, p in params}
