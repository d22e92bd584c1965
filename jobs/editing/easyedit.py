"""EasyEdit as a backend (used when ``easyeditor`` is importable and ``backend`` is auto/easyedit).

EasyEdit's own ``apply_rome_to_model`` / ``apply_memit_to_model`` edit the
model in place; the deltas are read off the rewrite modules' weights, so the
rest of the pipeline (merging, metrics, answering) is the same. Not exercised
in CI: EasyEdit has no installable package on PyPI.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from jobs.editing.hparams import EditHParams
from jobs.editing.requests import EditRequest


def apply_easyedit(model, tokenizer, algorithm: str, hp: EditHParams,
                   requests: Sequence[EditRequest]) -> dict[str, torch.Tensor]:
    if algorithm == "rome":
        from easyeditor import ROMEHyperParams as Params
        from easyeditor.models.rome import apply_rome_to_model as apply
    else:
        from easyeditor import MEMITHyperParams as Params
        from easyeditor.models.memit import apply_memit_to_model as apply
    fields = {f.name for f in dataclasses.fields(Params)}
    values = {k: v for k, v in hp.model_dump().items() if k in fields}
    values.update(model_name=str(model.config._name_or_path),
                  device=model.device.index or 0, stats_dir=values.get("stats_dir") or "./data/stats")
    params = Params(**{k: v for k, v in values.items() if k in fields})
    names = [f"{hp.rewrite_module_tmp.format(l)}.weight" for l in hp.layers]
    weights = dict(model.named_parameters())
    before = {n: weights[n].detach().clone() for n in names}
    reqs = [{"case_id": r.case_id, "prompt": r.prompt, "subject": r.subject, "target_new": r.target_new.strip()}
            for r in requests]
    if algorithm == "rome":
        for req in reqs:  # EasyEdit's ROME edits one request per call
            apply(model, tokenizer, [req], params, copy=False, return_orig_weights=False)
    else:
        apply(model, tokenizer, reqs, params, copy=False, return_orig_weights=False)
    return {n: (weights[n].detach() - before[n]).cpu() for n in names}
