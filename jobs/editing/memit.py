"""MEMIT (Meng et al., 2023): many facts at once, spread over several MLP layers.

For requests i = 1..n and layers l_1 < ... < l_L (``hp.layers``):

1. for each request, z_i = h_i + delta_i, the residual stream at the last
   edited layer l_L on the subject's last token, with delta_i optimised as in
   ROME (:func:`jobs.editing.rome.optimize_delta` hooked on the layer output);
2. for each layer l_j in order: keys K (one column per request, averaged over
   context prefixes) at the layer's rewrite module, the residual
   R = z - h(current model) divided by the L - j layers still to come, and
   delta W = R K^T (lambda C + K K^T)^-1, applied before the next layer's keys
   are read, so later layers correct what earlier ones left over.

lambda is ``mom2_update_weight``; C the key second moment (identity without
``mom2_adjustment``).

Sequential batches (``preserve``: the requests of the batches already edited
in): their keys K_p, read on the current model at each layer, join the
preserved term, delta W = R K^T (lambda C + K_p K_p^T + K K^T)^-1, so the
update also keeps the outputs W K_p that the earlier batches wrote; this is
the least-squares objective over all requests so far that one joint batch
would solve (MEMIT's own derivation; the sequential-editing form of AlphaEdit,
Fang et al., 2025), without re-optimising the earlier targets.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from jobs.editing.hparams import EditHParams
from jobs.editing.modules import make_row, mean_key, module, rows_at, weight_is_transposed
from jobs.editing.requests import EditRequest
from jobs.editing.rome import optimize_delta


def apply_memit(model, tokenizer, requests: Sequence[EditRequest], hp: EditHParams, templates: Sequence[str],
                covariances: Callable[[list[str]], dict[str, torch.Tensor]] | None,
                preserve: Sequence[EditRequest] = ()) -> dict[str, torch.Tensor]:
    """Edit ``model`` in place for all ``requests``, keeping what it does on ``preserve``'s keys (earlier
    batches' requests); returns ``{parameter name: delta W}`` (CPU)."""
    layers = sorted(hp.layers)
    z_layer = hp.layer_module_tmp.format(layers[-1])
    zs = []
    for req in requests:
        init, delta = optimize_delta(model, tokenizer, req, hp, z_layer, templates)
        zs.append(init + delta)
    z = torch.stack(zs, dim=1).double()  # (hidden, n)
    plain = [make_row(tokenizer, "{}", r.prompt, r.subject, hp.fact_token) for r in requests]
    names = [hp.rewrite_module_tmp.format(l) for l in layers]
    covs = covariances(names) if (hp.mom2_adjustment and covariances) else {}
    deltas: dict[str, torch.Tensor] = {}
    for j, (layer, name) in enumerate(zip(layers, names)):
        mod = module(model, name)
        keys = torch.stack([mean_key(model, tokenizer, r.prompt, r.subject, templates, name, hp.fact_token)
                            for r in requests], dim=1).double()  # (in, n)
        kept = keys @ keys.T
        if preserve:
            old = torch.stack([mean_key(model, tokenizer, r.prompt, r.subject, templates, name, hp.fact_token)
                               for r in preserve], dim=1).double()  # (in, m)
            kept = kept + old @ old.T
        current = rows_at(model, tokenizer, plain, z_layer, "output").T.double()  # (hidden, n)
        resid = (z - current) / (len(layers) - j)
        cov = covs[name].double().to(keys.device) if name in covs else torch.eye(keys.shape[0], dtype=torch.double,
                                                                                 device=keys.device)
        adj = torch.linalg.solve(hp.mom2_update_weight * cov + kept, keys)  # (in, n)
        upd = resid @ adj.T  # (out, in)
        with torch.no_grad():
            w = mod.weight
            upd = (upd.T if weight_is_transposed(mod) else upd).to(w.dtype)
            w.add_(upd)
        deltas[f"{name}.weight"] = upd.detach().cpu()
    return deltas
