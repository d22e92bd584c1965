"""Running edit batches: one batch = one model copy edited by one algorithm, returning weight deltas.

Batches are independent, so they run serially in this process or as parallel
Ray tasks (``num_cpus=1``, a GPU fraction where there are GPUs), each on its
own model copy; both paths call :func:`run_batch` and give bitwise the same
deltas (CPU work runs single-threaded, every sampling step is seeded, and the
model's touched weights are restored after each batch). Batches are merged by
adding all their deltas to one copy of the model (:func:`merge`).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from jobs.editing import scoring
from jobs.editing.hparams import EditHParams
from jobs.editing.modules import context_templates
from jobs.editing.requests import EditRequest

Pair = tuple[str, str]


@dataclass(frozen=True)
class EditBatch:
    index: int
    requests: tuple[EditRequest, ...]
    forget: tuple[Pair, ...] = ()  # unlearning: old-API completions
    retain: tuple[Pair, ...] = ()


@dataclass
class BatchResult:
    index: int
    deltas: dict[str, torch.Tensor]  # parameter name -> change, CPU
    rows: list[dict[str, float]]  # per-request metrics on this batch's own edited copy
    seconds: float
    backend: str = "builtin"
    extra: dict[str, float] = field(default_factory=dict)


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: float reductions then add up in the same order in every process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def touched_parameters(model, algorithm: str, hp: EditHParams) -> list[str]:
    if algorithm == "unlearn":
        from jobs.editing.unlearn import trainable

        return [n for n, _ in trainable(model, hp)]
    return [f"{hp.rewrite_module_tmp.format(l)}.weight" for l in hp.layers]


def backend_name(requested: str) -> str:
    """``auto`` picks EasyEdit when ``easyeditor`` is importable, else the built-in editors."""
    if requested == "auto":
        try:
            import easyeditor  # noqa: F401
        except ImportError:
            return "builtin"
        return "easyedit"
    return requested


def run_batch(model, tokenizer, algorithm: str, hp: EditHParams, batch: EditBatch, seed: int = 0,
              backend: str = "builtin") -> BatchResult:
    """Edit ``model`` for ``batch``, measure, then restore the touched weights; returns the deltas."""
    t0 = time.perf_counter()
    hp = hp.resolve(model)
    names = touched_parameters(model, algorithm, hp)
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in names}
    with single_thread():
        reference = scoring.locality_reference(model, tokenizer, batch.requests)
        try:
            deltas = _edit(model, tokenizer, algorithm, hp, batch, seed, backend)
            rows = scoring.score(model, tokenizer, batch.requests, reference)
            extra = _unlearn_extra(model, tokenizer, batch, saved, params) if algorithm == "unlearn" else {}
        finally:
            with torch.no_grad():
                for n, w in saved.items():
                    params[n].copy_(w)
    return BatchResult(batch.index, deltas, rows, time.perf_counter() - t0, backend, extra)


def _edit(model, tokenizer, algorithm: str, hp: EditHParams, batch: EditBatch, seed: int,
          backend: str) -> dict[str, torch.Tensor]:
    if backend == "easyedit" and algorithm in ("rome", "memit"):
        from jobs.editing.easyedit import apply_easyedit

        return apply_easyedit(model, tokenizer, algorithm, hp, batch.requests)
    if algorithm == "unlearn":
        from jobs.editing.unlearn import apply_unlearning

        return apply_unlearning(model, tokenizer, batch.forget, batch.retain, hp)
    from jobs.editing.covariance import second_moments

    templates = context_templates(model, tokenizer, hp.context_template_length_params, seed)
    covs: dict[str, torch.Tensor] = {}
    if hp.mom2_adjustment:  # on the unedited model, before any request of the batch changes it
        covs = second_moments(model, tokenizer, [hp.rewrite_module_tmp.format(l) for l in hp.layers], hp)
    lookup = (lambda names: {n: covs[n] for n in names}) if covs else None
    if algorithm == "memit":
        from jobs.editing.memit import apply_memit

        return apply_memit(model, tokenizer, batch.requests, hp, templates, lookup)
    from jobs.editing.rome import apply_rome

    deltas: dict[str, torch.Tensor] = {}
    for req in batch.requests:  # ROME edits one fact at a time, each on the already-edited model
        for e in apply_rome(model, tokenizer, req, hp, templates, lookup):
            deltas[e.param] = deltas[e.param] + e.delta_weight if e.param in deltas else e.delta_weight
    return deltas


def _unlearn_extra(model, tokenizer, batch: EditBatch, saved, params) -> dict[str, float]:
    """Mean per-token log-likelihood of the forget and retain sets, after and before unlearning."""
    from functools import partial

    from jobs.editing.unlearn import mean_logprob

    mean_lp = partial(mean_logprob, model, tokenizer)
    after = {"forget_logprob": mean_lp(batch.forget), "retain_logprob": mean_lp(batch.retain)}
    edited = {n: params[n].detach().clone() for n in saved}
    with torch.no_grad():
        for n, w in saved.items():
            params[n].copy_(w)
        before = {"forget_logprob_before": mean_lp(batch.forget), "retain_logprob_before": mean_lp(batch.retain)}
        for n, w in edited.items():
            params[n].copy_(w)
    return {**after, **before}


_MODELS: dict[str, Any] = {}


def _cached_model(model_spec: dict[str, Any], use_gpu: bool):
    """One loaded model per worker process (batches restore what they change, so reuse is safe)."""
    key = json.dumps([model_spec, use_gpu], sort_keys=True)
    if key not in _MODELS:
        from jobs.inference.models import load_model

        _MODELS[key] = load_model(model_spec, use_gpu=use_gpu)
    return _MODELS[key]


def _batch_task(model_spec, algorithm, hp_dict, batch, seed, backend, use_gpu) -> BatchResult:
    model, tokenizer = _cached_model(model_spec, use_gpu)
    return run_batch(model, tokenizer, algorithm, EditHParams.model_validate(hp_dict), batch, seed, backend)


def run_batches(model_spec: dict[str, Any], algorithm: str, hp: EditHParams, batches: Sequence[EditBatch], *,
                parallel: bool, seed: int = 0, backend: str = "builtin", use_gpu: bool = False,
                gpus_per_task: float = 0.5) -> list[BatchResult]:
    """Every batch's result, in batch order; ``parallel`` runs them as Ray tasks (Ray must be initialised)."""
    hp_dict = hp.model_dump()
    if not parallel:
        return [_batch_task(model_spec, algorithm, hp_dict, b, seed, backend, use_gpu) for b in batches]
    import ray

    gpus = gpus_per_task if use_gpu and torch.cuda.is_available() else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_batch_task)
    refs = [task.remote(model_spec, algorithm, hp_dict, b, seed, backend, bool(gpus)) for b in batches]
    return ray.get(refs)


def combined(results: Sequence[BatchResult]) -> dict[str, torch.Tensor]:
    """Every batch's deltas summed per parameter (edits to one matrix add up, like sequential edits
    without re-solving for each other's keys)."""
    out: dict[str, torch.Tensor] = {}
    for res in sorted(results, key=lambda r: r.index):
        for name, d in res.deltas.items():
            out[name] = out[name] + d if name in out else d.clone()
    return out


def merge(model, results: Sequence[BatchResult]) -> dict[str, torch.Tensor]:
    """Add the batches' :func:`combined` deltas to ``model`` in place; returns them."""
    from jobs.editing.saved import apply

    deltas = combined(results)
    apply(model, deltas)
    return deltas
