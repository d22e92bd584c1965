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

from typing import Sequence

import torch
import torch.nn.functional as F

from jobs.editing.hparams import EditHParams

Pair = tuple[str, str]  # (prompt, completion)


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
        ref, _ = sequence_logprobs(model, tokenizer, forget)
    opt = torch.optim.AdamW([p for _, p in params], lr=hp.unlearn_lr, weight_decay=0.0)
    try:
        for _ in range(hp.unlearn_steps):
            lp, n = sequence_logprobs(model, tokenizer, forget)
            if hp.unlearn_loss == "ga":
                forget_loss = (lp / n).mean()  # ascent on the NLL = descent on the log-likelihood
            else:
                forget_loss = -(2.0 / hp.unlearn_beta) * F.logsigmoid(-hp.unlearn_beta * (lp - ref)).mean()
            loss = forget_loss
            if retain and hp.unlearn_retain_weight:
                rlp, rn = sequence_logprobs(model, tokenizer, retain)
                loss = loss + hp.unlearn_retain_weight * (-(rlp / rn).mean())
            if not torch.isfinite(loss):
                raise FloatingPointError("unlearn: loss became non-finite (lower unlearn_lr or unlearn_steps)")
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    return {n: (p.detach() - before[n]).cpu() for n, p in params}
