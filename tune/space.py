"""Search spaces: the spec's ``tune:`` section, validated, and turned into Optuna suggestions.

A space maps a *dotted option path* of the tuned method (``learning_rate``,
``adapter.rank``, ``warmup_ratio``, ...) to a distribution:

- ``{low, high, log}``: a float (``log: true`` samples log-uniformly); ints
  when ``int: true``;
- a list: one of these values (categorical).

``layers: {}`` is special: it searches the adapted layer range, a
``(start, end)`` pair with ``0 <= start <= end < num_layers`` (read from the
model's config), and makes the adapter hierarchical. It is suggested as two
parameters with fixed bounds, ``layer_end`` in ``[min_width - 1, num_layers - 1]``
and ``layer_width`` in ``[min_width, num_layers]``, and ``start = max(0, end -
width + 1)``: every pair is a valid range, and because neither bound depends
on another parameter, Optuna's multivariate TPE models them jointly with the
learning rate (a range whose bounds depend on ``start`` drops out of its joint
model; see docs/tuning.md).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

LAYERS = "layers"
LAYER_END, LAYER_WIDTH = "layer_end", "layer_width"  # the sampled pair (see layer_range)
LAYER_START = "layer_start"  # derived; given directly only by searches from before layer_width


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Range(_Strict):
    low: float
    high: float
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _check(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low: {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("low: a log-uniform range needs low > 0")
        return self


class LayerRange(_Strict):
    """The adapted layers as (start, end); ``min_width`` layers at least (all of them if the model has fewer)."""

    min_width: PositiveInt = 1


class ASHA(_Strict):
    kind: Literal["asha"] = "asha"
    grace_period: PositiveInt = 5  # training steps before a trial can be stopped; rungs at grace x factor^k
    reduction_factor: float = Field(2.0, gt=1)


class NoScheduler(_Strict):
    kind: Literal["fifo"] = "fifo"


class TrialResources(_Strict):
    """Per trial, for its Ray Train workers; fractional GPUs let several trials share one GPU."""

    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0)


class TuneSpec(_Strict):
    method: str  # the name of the method (in ``methods:``) whose options are searched
    # "loss" (training, every logging step) or a validation score (eval_loss; the method needs ``validation:``)
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    num_samples: PositiveInt = 8
    max_concurrent_trials: PositiveInt = 2
    search: Literal["optuna", "random"] = "optuna"  # TPE, or random sampling of the same space
    startup_trials: PositiveInt = 4  # TPE samples at random until this many trials have finished
    scheduler: ASHA | NoScheduler = Field(default_factory=ASHA, discriminator="kind")
    resources_per_trial: TrialResources = Field(default_factory=TrialResources)
    # What a diverged trial reports instead of NaN (Optuna rejects NaN): worse than any real value.
    divergence_penalty: PositiveFloat = 1000.0
    # false: a diverged trial is still marked (and penalised) but trains to the end, as without the guard
    stop_diverged: bool = True
    space: dict[str, Range | list[Any] | LayerRange] = Field(min_length=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "TuneSpec":
        for key, dist in self.space.items():
            if isinstance(dist, list) and not dist:
                raise ValueError(f"space.{key}: an empty list of choices")
            if key == LAYERS and not isinstance(dist, LayerRange):
                raise ValueError(f"space.{key}: use '{LAYERS}: {{}}' (or {{min_width: N}}) for the layer range")
            if key != LAYERS and isinstance(dist, LayerRange):
                raise ValueError(f"space.{key}: expected {{low, high}} or a list of choices")
        return self

    @property
    def penalty(self) -> float:
        """The value a diverged trial reports, on the bad side of ``mode``."""
        return self.divergence_penalty if self.mode == "min" else -self.divergence_penalty


class define_space:  # noqa: N801 - used like a function: define_space(space, num_layers)
    """An Optuna define-by-run function over ``space`` (``OptunaSearch(space=...)``).

    A class, not a closure: Tune pickles the searcher (and so this) to checkpoint and resume a search.
    """

    def __init__(self, space: dict[str, Range | list | LayerRange], num_layers: int):
        self.space, self.num_layers = space, num_layers

    def __call__(self, trial) -> None:
        n = self.num_layers
        for key, dist in self.space.items():
            if isinstance(dist, LayerRange):
                width = min(dist.min_width, n)
                trial.suggest_int(LAYER_END, width - 1, n - 1)
                trial.suggest_int(LAYER_WIDTH, width, n)
            elif isinstance(dist, list):
                trial.suggest_categorical(key, dist)
            elif dist.int:
                trial.suggest_int(key, int(dist.low), int(dist.high), log=dist.log)
            else:
                trial.suggest_float(key, dist.low, dist.high, log=dist.log)


def apply_params(options: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The method's options with a trial's parameters set (dotted paths; the layer pair sets the adapter)."""
    out = copy.deepcopy(options)
    layers = layer_range(params)
    if layers is not None:
        adapter = out.setdefault("adapter", {})
        adapter["scope"] = "hierarchical"
        adapter["layers"] = list(layers)
    for key, value in params.items():
        if key in (LAYER_START, LAYER_END, LAYER_WIDTH):
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def layer_range(params: dict[str, Any]) -> tuple[int, int] | None:
    """The ``(start, end)`` layers a trial's parameters select, or None when the layer range is not searched."""
    if LAYER_END not in params:
        return None
    end = int(params[LAYER_END])
    if LAYER_WIDTH in params:
        return max(0, end - int(params[LAYER_WIDTH]) + 1), end
    return int(params[LAYER_START]), end


def representative_params(space: dict[str, Range | list | LayerRange]) -> dict[str, Any]:
    """One point of every distribution (its low end / first choice), to check paths and types before a search."""
    out: dict[str, Any] = {}
    for key, dist in space.items():
        if isinstance(dist, LayerRange):
            out.update({LAYER_END: dist.min_width - 1, LAYER_WIDTH: dist.min_width})
        elif isinstance(dist, list):
            out[key] = dist[0]
        else:
            out[key] = int(dist.low) if dist.int else dist.low
    return out
