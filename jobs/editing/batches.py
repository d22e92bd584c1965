"""Running edit batches: one batch = one algorithm's edit of a model copy, returning weight deltas.

Batches run in one of two modes (``mode``):

- ``sequential`` (default): batch i is solved on the base model plus the deltas
  of batches 0..i-1, so it sees (and corrects for) what they changed; the final
  weights are those of editing batch after batch. Serially that is a loop
  carrying the accumulated deltas; under Ray it is a chain of tasks, task i
  receiving task i-1's accumulated deltas as an ObjectRef argument (so Ray
  starts it when that task ends, with the same resources as any batch task).
- ``independent``: every batch is solved on the unedited model, serially or as
  parallel Ray tasks, and the deltas are summed; batches then interfere
  (exact only when their keys are C^-1-orthogonal).

Each batch is solved in :func:`run_batch` on a model copy whose touched
weights are restored afterwards (a Ray worker reuses its loaded model); key
statistics and context prefixes always come from the unedited model. Serial
and Ray runs give bitwise the same deltas (CPU work runs single-threaded and
every sampling step is seeded). :func:`merge` adds the batches' deltas, summed
in batch order, to one model copy: in sequential mode that is exactly the
chain's accumulated total.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import torch

from jobs.editing import scoring
from jobs.editing.hparams import EditHParams
from jobs.editing.modules import context_templates
from jobs.editing.requests import EditRequest

Pair = tuple[str, str]
Mode = Literal["sequential", "independent"]
MODES: tuple[str, ...] = ("sequential", "independent")


@dataclass(frozen=True)
class EditBatch:
    index: int
    requests: tuple[EditRequest, ...]
    forget: tuple[Pair, ...] = ()  # unlearning: old-API completions
    retain: tuple[Pair, ...] = ()


@dataclass
class BatchResult:
    index: int
    deltas: dict[str, torch.Tensor]  # parameter name -> this batch's own change, CPU
    # per-request metrics right after this batch, on its copy (sequential: on top of the earlier batches)
    rows: list[dict[str, float]]
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
              backend: str = "builtin", prior: dict[str, torch.Tensor] | None = None,
              earlier: Sequence[EditRequest] = ()) -> BatchResult:
    """Edit ``model`` for ``batch``, measure, then restore the touched weights; returns the batch's deltas.

    Sequential mode: ``prior`` = the earlier batches' summed deltas, added before solving, and ``earlier`` =
    their requests, whose keys MEMIT preserves. Key statistics, context prefixes and the locality reference
    are taken on ``model`` as given, before ``prior`` is added.
    """
    t0 = time.perf_counter()
    hp = hp.resolve(model)
    names = touched_parameters(model, algorithm, hp)
    params = dict(model.named_parameters())
    prior = prior or {}
    saved = {n: params[n].detach().clone() for n in dict.fromkeys([*names, *prior])}
    with single_thread():
        reference = scoring.locality_reference(model, tokenizer, batch.requests)
        try:
            setup = _setup(model, tokenizer, algorithm, hp, seed, backend)
            _add(params, prior)
            deltas = _edit(model, tokenizer, algorithm, hp, batch, backend, *setup, earlier)
            rows = scoring.score(model, tokenizer, batch.requests, reference)
            extra = _unlearn_extra(model, tokenizer, batch, saved, params) if algorithm == "unlearn" else {}
        finally:
            with torch.no_grad():
                for n, w in saved.items():
                    params[n].copy_(w)
    return BatchResult(batch.index, deltas, rows, time.perf_counter() - t0, backend, extra)


def _add(params: dict[str, torch.nn.Parameter], deltas: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, d in deltas.items():
            params[name].add_(d.to(params[name].device, params[name].dtype))


def _setup(model, tokenizer, algorithm: str, hp: EditHParams, seed: int, backend: str):
    """Built-in ROME/MEMIT's context prefixes and key statistics, on the unedited model (as ROME's code caches
    them once): every batch of a sequence uses the same ones, and the statistics' cache key stays the model's."""
    if algorithm == "unlearn" or (backend == "easyedit" and algorithm in ("rome", "memit")):
        return [], None
    from jobs.editing.covariance import second_moments

    templates = context_templates(model, tokenizer, hp.context_template_length_params, seed)
    covs: dict[str, torch.Tensor] = {}
    if hp.mom2_adjustment:
        covs = second_moments(model, tokenizer, [hp.rewrite_module_tmp.format(l) for l in hp.layers], hp)
    lookup = (lambda names: {n: covs[n] for n in names}) if covs else None
    return templates, lookup


def _edit(model, tokenizer, algorithm: str, hp: EditHParams, batch: EditBatch, backend: str, templates,
          lookup, earlier: Sequence[EditRequest]) -> dict[str, torch.Tensor]:
    if backend == "easyedit" and algorithm in ("rome", "memit"):
        from jobs.editing.easyedit import apply_easyedit

        return apply_easyedit(model, tokenizer, algorithm, hp, batch.requests)
    if algorithm == "unlearn":
        from jobs.editing.unlearn import apply_unlearning

        return apply_unlearning(model, tokenizer, batch.forget, batch.retain, hp)
    if algorithm == "memit":
        from jobs.editing.memit import apply_memit

        return apply_memit(model, tokenizer, batch.requests, hp, templates, lookup, earlier)
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


def _batch_task(model_spec, algorithm, hp_dict, batch, seed, backend, use_gpu, prior=None,
                earlier=()) -> BatchResult:
    model, tokenizer = _cached_model(model_spec, use_gpu)
    return run_batch(model, tokenizer, algorithm, EditHParams.model_validate(hp_dict), batch, seed, backend, prior,
                     earlier)


def _chain_task(model_spec, algorithm, hp_dict, batch, seed, backend, use_gpu, prior, earlier):
    """One link of a sequential chain: ``(this batch's result, deltas of every batch so far)``."""
    res = _batch_task(model_spec, algorithm, hp_dict, batch, seed, backend, use_gpu, prior, earlier)
    return res, accumulate(prior, res.deltas)


def accumulate(total: dict[str, torch.Tensor] | None, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``total + deltas`` per parameter (new tensors; the same additions, in the same order, as :func:`combined`)."""
    out = dict(total or {})
    for name, d in deltas.items():
        out[name] = out[name] + d if name in out else d.clone()
    return out


def run_batches(model_spec: dict[str, Any], algorithm: str, hp: EditHParams, batches: Sequence[EditBatch], *,
                parallel: bool, mode: Mode = "sequential", seed: int = 0, backend: str = "builtin",
                use_gpu: bool = False, gpus_per_task: float = 0.5) -> list[BatchResult]:
    """Every batch's result, in batch order (see the module docstring for ``mode``); ``parallel`` runs them as
    Ray tasks (Ray must be initialised): concurrent when independent, a chain of tasks when sequential."""
    if mode not in MODES:
        raise ValueError(f"batches mode must be one of {', '.join(MODES)}, not {mode!r}")
    hp_dict = hp.model_dump()
    batches = sorted(batches, key=lambda b: b.index)
    if not parallel:
        results, total = [], None
        for i, b in enumerate(batches):
            if mode == "independent":
                results.append(_batch_task(model_spec, algorithm, hp_dict, b, seed, backend, use_gpu))
                continue
            results.append(_batch_task(model_spec, algorithm, hp_dict, b, seed, backend, use_gpu, total,
                                       _requests(batches[:i])))
            total = accumulate(total, results[-1].deltas)
        return results
    import ray

    gpus = gpus_per_task if use_gpu and torch.cuda.is_available() else 0
    options = dict(num_cpus=1, num_gpus=gpus, max_retries=0)
    if mode == "independent":
        task = ray.remote(**options)(_batch_task)
        return ray.get([task.remote(model_spec, algorithm, hp_dict, b, seed, backend, bool(gpus)) for b in batches])
    link = ray.remote(num_returns=2, **options)(_chain_task)
    refs, total = [], None  # total: an ObjectRef after the first link; Ray passes its value and orders the chain
    for i, b in enumerate(batches):
        ref, total = link.remote(model_spec, algorithm, hp_dict, b, seed, backend, bool(gpus), total,
                                 _requests(batches[:i]))
        refs.append(ref)
    return ray.get(refs)


def _requests(batches: Sequence[EditBatch]) -> tuple[EditRequest, ...]:
    return tuple(r for b in batches for r in b.requests)


def combined(results: Sequence[BatchResult]) -> dict[str, torch.Tensor]:
    """Every batch's deltas summed per parameter, in batch order: the total change from the base model in
    sequential mode; in independent mode, edits solved without each other added up."""
    out: dict[str, torch.Tensor] = {}
    for res in sorted(results, key=lambda r: r.index):
        out = accumulate(out, res.deltas)
    return out


def merge(model, results: Sequence[BatchResult]) -> dict[str, torch.Tensor]:
    """Add the batches' :func:`combined` deltas to ``model`` in place; returns them."""
    from jobs.editing.saved import apply

    deltas = combined(results)
    apply(model, deltas)
    return deltas
