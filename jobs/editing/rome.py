"""ROME (Meng et al., 2022): one fact, one rank-one update of one MLP's output projection.

For a request (subject s, prompt p, new target o*) at layer l, with W the
rewrite module (the MLP's down/out projection):

1. key k*: W's input at s's last token, averaged over context prefixes
   (:func:`jobs.editing.modules.mean_key`);
2. value: a vector delta added to W's output at s's last token is optimised so
   the model predicts o* after every prefixed prompt, plus a KL term keeping
   "{s} is a" unchanged and a weight decay, with ||delta|| clamped to
   ``clamp_norm_factor`` times the initial output's norm (:func:`optimize_delta`);
   v* = W k* + delta;
3. update: W' = W + Lambda u^T with u = C^-1 k* (u = k* without
   ``mom2_adjustment``) and Lambda = (v* - W k*) / (u . k*), so W' k* = v*
   and W' k = W k for every key with k^T C^-1 k* = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from jobs.editing.hparams import EditHParams
from jobs.editing.modules import (
    frozen,
    make_row,
    mean_key,
    module,
    output_edited,
    pad,
    target_ids,
    weight_is_transposed,
)
from jobs.editing.requests import EditRequest

KL_PROMPTS = ("{} is a",)
EARLY_STOP_LOSS = 5e-2  # the papers' threshold: the target is already near-certain


def _logits_at_layer(model, hp: EditHParams, hidden: torch.Tensor) -> torch.Tensor:
    """Logits read out from a layer's residual stream through the final norm and the unembedding."""
    ln_f = module(model, hp.ln_f_module)
    head = module(model, hp.lm_head_module)
    return head(ln_f(hidden))


def optimize_delta(model, tokenizer, request: EditRequest, hp: EditHParams, hook_name: str,
                   templates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(initial output, delta)`` at ``hook_name``'s output on the subject's fact token (both float32).

    ``hook_name`` is the rewrite module for ROME and the layer's residual output
    for MEMIT; the loss is read at ``v_loss_layer``.
    """
    target = target_ids(tokenizer, request.target_new)
    if not target:
        raise ValueError(f"edit '{request.case_id}': empty target")
    rewrite = [make_row(tokenizer, t, request.prompt, request.subject, hp.fact_token, target) for t in templates]
    kl_rows = [make_row(tokenizer, "{}", p, request.subject, hp.fact_token) for p in KL_PROMPTS]
    rows = rewrite + kl_rows
    batch = pad(rows, tokenizer.pad_token_id, model.device)
    n_rw = len(rewrite)
    index = torch.tensor([r.index for r in rows], device=model.device)
    kl_last = torch.tensor([len(r.input_ids) - 1 for r in kl_rows], device=model.device)
    loss_layer = hp.layer_module_tmp.format(hp.v_loss_layer)

    delta: torch.Tensor | None = None
    init: dict[str, torch.Tensor] = {}

    def add_delta(out: torch.Tensor) -> torch.Tensor:
        nonlocal delta
        if delta is None:  # first call: learn the width and the unedited value
            delta = torch.zeros(out.shape[-1], device=out.device, dtype=torch.float32, requires_grad=True)
        if "v" not in init:
            init["v"] = out[0, index[0]].detach().float().clone()
        rows_idx = torch.arange(out.shape[0], device=out.device)
        bump = torch.zeros_like(out)
        bump[rows_idx, index] = delta.to(out.dtype)
        return out + bump

    captured_h: dict[str, torch.Tensor] = {}
    loss_mod = module(model, loss_layer)
    handle = loss_mod.register_forward_hook(
        lambda m, a, out: captured_h.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    labels = batch["labels"][:n_rw]
    mask = labels != -100
    init_kl: torch.Tensor | None = None
    opt: torch.optim.Optimizer | None = None
    try:
        with frozen(model), torch.enable_grad(), output_edited(model, hook_name, add_delta):
            for step in range(hp.v_num_grad_steps):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                if opt is None:
                    opt = torch.optim.Adam([delta], lr=hp.v_lr)
                kl_logp = torch.log_softmax(
                    logits[n_rw:][torch.arange(len(kl_rows)), kl_last].float(), dim=-1)
                if init_kl is None:
                    init_kl = kl_logp.detach().clone()
                h = captured_h["h"][:n_rw]
                logp = torch.log_softmax(_logits_at_layer(model, hp, h).float(), dim=-1)
                tok_logp = torch.gather(logp, 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
                nll = (-(tok_logp * mask).sum(1) / mask.sum(1)).mean()
                kl = hp.kl_factor * torch.nn.functional.kl_div(init_kl, kl_logp, log_target=True,
                                                               reduction="batchmean")
                decay = hp.v_weight_decay * (delta.norm() / init["v"].norm() ** 2)
                loss = nll + kl + decay
                if loss.item() < EARLY_STOP_LOSS:
                    break
                if step == hp.v_num_grad_steps - 1:
                    break  # the last step's forward only measures
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    limit = hp.clamp_norm_factor * init["v"].norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    finally:
        handle.remove()
    assert delta is not None
    return init["v"], delta.detach().clone()


@dataclass
class RankOneEdit:
    """One applied ROME update: k*, v*, the direction u = C^-1 k*, and the weight change."""

    param: str
    key: torch.Tensor
    value: torch.Tensor
    u: torch.Tensor
    delta_weight: torch.Tensor  # in the parameter's own layout


def rank_one_delta(weight: torch.Tensor, transposed: bool, key: torch.Tensor, value_delta: torch.Tensor,
                   cov: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(delta W in the parameter's layout, u)`` with (W + delta W) k* = W k* + value_delta."""
    k = key.double()
    u = torch.linalg.solve(cov.double().to(k.device), k) if cov is not None else k
    lam = value_delta.double() / torch.dot(u, k)
    upd = torch.outer(lam, u)  # (out, in)
    upd = upd.T if transposed else upd
    return upd.to(weight.dtype), u.float()


def apply_rome(model, tokenizer, request: EditRequest, hp: EditHParams, templates: Sequence[str],
               covariances: Callable[[list[str]], dict[str, torch.Tensor]] | None) -> list[RankOneEdit]:
    """Edit ``model`` in place for one request, at each of ``hp.layers`` in turn."""
    edits = []
    for layer in sorted(hp.layers):
        name = hp.rewrite_module_tmp.format(layer)
        mod = module(model, name)
        key = mean_key(model, tokenizer, request.prompt, request.subject, templates, name, hp.fact_token)
        _, delta = optimize_delta(model, tokenizer, request, hp, name, templates)
        with torch.no_grad():
            transposed = weight_is_transposed(mod)
            w = mod.weight
            current = (key.to(w.dtype) @ w if transposed else w @ key.to(w.dtype)).float()
            bias = mod.bias.float() if getattr(mod, "bias", None) is not None else 0.0
            cov = covariances([name])[name] if (hp.mom2_adjustment and covariances) else None
            upd, u = rank_one_delta(w, transposed, key, delta, cov)
            w.add_(upd)
        edits.append(RankOneEdit(f"{name}.weight", key, current + bias + delta, u, upd.detach().cpu()))
    return edits
