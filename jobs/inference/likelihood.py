"""The likelihood scorecard: teacher-forced, no generation, so it moves where greedy answers do not.

For each record, after the same prompt the method answers (its own strategy, rendered with the
model's chat template), the model reads a code block in the answer format the trainers teach
(``data.prompts.answer_block``) and we take the mean log-probability per token of that block:

- ``ref_nll``: the mean negative log-likelihood (nats per token) of the record's reference code:
  the new-API code on migration data (lower = the model expects the new API), the canonical solution
  on HumanEval (higher than the baseline = forgetting);
- ``prefers_new`` (records with old AND new code that differ): 1 if the new code gets the higher mean
  log-probability, else 0; ``nll_margin``: old code's NLL minus new code's (> 0 = prefers the new).

Which records carry which score depends on the record alone, never on the model's answer. It is
EasyEdit's teacher-forced view (efficacy as "the target outranks the original") applied to every
method that holds a model, so prompting, adapters and edited models stand in one table.

Batches are left-padded with explicit position ids (the scores equal unpadded scoring), longest
first within a token budget, and only the logits of the scored tail are materialised
(``logits_to_keep``), so a 49k-token vocabulary costs little memory.
"""

from __future__ import annotations

from typing import Sequence

from data.prompts import answer_block
from data.records import TaskRecord

SCORES = ("ref_nll", "prefers_new", "nll_margin")
TOKEN_BUDGET = 8192  # prompt + continuation tokens per forward pass


def comparable_old(record: TaskRecord) -> str | None:
    """The record's old code where it can be compared with the new (both present and different)."""
    old, new = record.old_code, record.reference
    if not old or not new or old.strip() == new.strip():
        return None
    return old


def mean_logprobs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str],
                  token_budget: int = TOKEN_BUDGET) -> list[float]:
    """Mean log-probability per token of each continuation after its prompt (teacher-forced, nats)."""
    import torch

    if not prompts:
        return []
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    cont_ids = tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    seqs = [p + c for p, c in zip(prompt_ids, cont_ids)]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = [float("nan")] * len(seqs)
    was_training = model.training
    model.eval()
    start = 0
    try:
        while start < len(order):
            width = len(seqs[order[start]])
            size = max(1, token_budget // max(1, width))
            members = order[start:start + size]
            start += len(members)
            ids = torch.full((len(members), width), pad, dtype=torch.long)
            mask = torch.zeros((len(members), width), dtype=torch.long)
            for row, i in enumerate(members):
                ids[row, width - len(seqs[i]):] = torch.tensor(seqs[i])
                mask[row, width - len(seqs[i]):] = 1
            tail = max(len(cont_ids[i]) for i in members)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device))
            with torch.no_grad():
                try:
                    logits = model(**kwargs, logits_to_keep=tail + 1).logits
                except TypeError:  # a model class without logits_to_keep
                    logits = model(**kwargs).logits
            logits = logits[:, -(tail + 1):-1].float()  # position t predicts token t + 1
            targets = ids[:, -tail:].to(device)
            logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
            for row, i in enumerate(members):
                n = len(cont_ids[i])
                out[i] = float(logp[row, tail - n:].mean()) if n else float("nan")
    finally:
        model.train(was_training)
    return out


def score_records(model, tokenizer, records: Sequence[TaskRecord], chats: Sequence[Sequence[dict]],
                  token_budget: int = TOKEN_BUDGET) -> list[dict[str, float]]:
    """The scorecard of each record (``{}`` where it has no reference code), after ``chats[i]``."""
    from jobs.inference.generation import render

    prompts, conts, owners = [], [], []
    for i, (rec, chat) in enumerate(zip(records, chats)):
        if not rec.reference:
            continue
        text = render(tokenizer, chat)
        prompts.append(text)
        conts.append(answer_block(rec.reference))
        owners.append((i, "new"))
        old = comparable_old(rec)
        if old is not None:
            prompts.append(text)
            conts.append(answer_block(old))
            owners.append((i, "old"))
    values = mean_logprobs(model, tokenizer, prompts, conts, token_budget)
    by_record: dict[int, dict[str, float]] = {}
    for (i, side), v in zip(owners, values):
        by_record.setdefault(i, {})[side] = v
    rows: list[dict[str, float]] = []
    for i in range(len(records)):
        got = by_record.get(i, {})
        row: dict[str, float] = {}
        if "new" in got:
            row["ref_nll"] = -got["new"]
        if "old" in got:
            row["nll_margin"] = got["new"] - got["old"]  # = old NLL - new NLL
            row["prefers_new"] = 1.0 if got["new"] > got["old"] else 0.0
        rows.append(row)
    return rows
