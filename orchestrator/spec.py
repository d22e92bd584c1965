"""Experiment specs: a plain YAML file validated into typed objects.

Every problem with a spec surfaces as one :class:`SpecError` line naming the
field (``methods[1].kind: unknown method kind 'x' ...``) before any work
starts. Method kinds bring their own option models (see ``jobs.methods.registry``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from data.registry import DATASETS, resolve_path
from jobs.inference.models import ModelSpec
from jobs.methods.registry import METHODS, method_module
from jobs.sandbox.slots import DEFAULT_PRELOAD
from tune.space import TuneSpec, apply_params, representative_params

# Names become file names and job ids ("<method>__<dataset>"): plain, and no "__".
NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]|_[A-Za-z0-9.-])*_?$"


class SpecError(ValueError):
    """A spec is invalid; ``str()`` is the one line shown to the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)  # its key in every result
    kind: str | None = None  # defaults to the name
    path: str | None = None
    limit: PositiveInt | None = None
    # CodeUpdateArena's specificity condition: methods are shown an unrelated update (SPass)
    control: Literal["random_update"] | None = None
    # Built-in migrations: "train" = each case's first code variant (what rule miners and trainers may
    # see), "test" = its other variants (held out); None = all.
    split: Literal["train", "test"] | None = None

    @model_validator(mode="after")
    def _check(self) -> "DatasetSpec":
        if self.kind is None:
            self.kind = self.name
        if self.kind not in DATASETS:
            raise ValueError(f"kind: unknown dataset kind '{self.kind}' (known: {', '.join(sorted(DATASETS))})")
        if self.control is not None and self.kind != "codeupdatearena":
            raise ValueError(f"control: only codeupdatearena has a control condition, not '{self.kind}'")
        if self.split is not None and self.kind != "migrations":
            raise ValueError(f"split: only the built-in migrations have train/test splits, not '{self.kind}'")
        if DATASETS[self.kind].requires_path and self.path is None:
            raise ValueError(f"path: dataset kind '{self.kind}' needs a path")
        path = self.resolved_path
        if path is not None and not path.exists():
            hint = "" if self.path else " (set APIMIG_DATA_DIR or give path)"
            raise ValueError(f"path: file not found: {path}{hint}")
        return self

    @property
    def resolved_path(self) -> Path | None:
        return resolve_path(self.kind or self.name, self.path)


class MethodSpec(BaseModel):
    """``name``, ``kind`` and ``datasets``; every other key is an option of that kind."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    kind: str
    # The dataset names this method is scored on; None = every dataset. (The oracle and the rules have
    # nothing to say about HumanEval, for instance.)
    datasets: list[str] | None = Field(None, min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_options(cls, data: Any) -> Any:
        if isinstance(data, dict) and "options" not in data:
            data = dict(data)
            data["options"] = {k: data.pop(k) for k in list(data) if k not in ("name", "kind", "datasets")}
        return data

    @model_validator(mode="after")
    def _check_options(self) -> "MethodSpec":
        if self.kind not in METHODS:
            raise ValueError(f"kind: unknown method kind '{self.kind}' (known: {', '.join(sorted(METHODS))})")
        try:
            self.options = method_module(self.kind).Options.model_validate(self.options).model_dump(mode="json")
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None
        return self


class EvalSpec(_Strict):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    timeout_s: float = Field(10.0, gt=0, le=24 * 3600)  # wall clock per program
    with_update: bool = True  # CodeUpdateArena: install the simulated update
    k: list[PositiveInt] = Field(default_factory=lambda: [1])  # pass@k reported where samples allow
    memory_mb: int = Field(4096, ge=64, le=1 << 20)  # per program, on top of the preloaded sandbox
    disk_mb: int = Field(64, ge=1, le=1 << 20)  # everything one program writes (enforced as root)
    max_files: int = Field(2048, ge=16, le=1 << 24)  # files one program may create (enforced as root)
    preload: list[str] = Field(default_factory=lambda: list(DEFAULT_PRELOAD))  # imported once per sandbox
    pool_size: PositiveInt | None = None  # sandbox actors; None = one per cluster CPU
    python_substitution: bool = True  # GitChameleon: run under this Python when the pinned one is missing
    scorecard: bool = True  # the likelihood scorecard (ref_nll, prefers_new) of every method that holds a model
    # A Δ ref_nll (nats per token) whose whole interval lies beyond this is reported as beyond the margin; a
    # detectable shift inside it is reported as within it (a likelihood detects shifts too small to matter).
    nll_margin: float = Field(0.05, ge=0, le=10)


class ResourcesSpec(_Strict):
    num_workers: PositiveInt = 2  # jobs (or Ray Train workers) at once
    use_gpu: bool = False
    num_cpus: PositiveInt | None = None  # for the local Ray instance; None = all


class ExperimentSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    model: ModelSpec = Field(default_factory=ModelSpec)
    datasets: list[DatasetSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    seed: int = 0
    # Stochastic methods (trainers, sampling) run once per seed and their intervals cover the seeds;
    # empty = ``[seed]``. Deterministic methods run once, with the first seed.
    seeds: list[int] = Field(default_factory=list)
    # The untouched model's method that every other method is compared with (paired, on the same records);
    # None = the first ``prompt`` method, if any.
    baseline: str | None = None
    tune: TuneSpec | None = None  # used by ``python -m orchestrator tune``; ``run`` ignores it

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) or [self.seed]


    @model_validator(mode="after")
    def _unique_names(self) -> "ExperimentSpec":
        for section in ("datasets", "methods"):
            seen: set[str] = set()
            for i, item in enumerate(getattr(self, section)):
                if item.name in seen:
                    raise ValueError(f"{section}[{i}].name: duplicate name '{item.name}'")
                seen.add(item.name)
        datasets = {d.name for d in self.datasets}
        for i, m in enumerate(self.methods):
            unknown = [d for d in m.datasets or [] if d not in datasets]
            if unknown:
                raise ValueError(f"methods[{i}].datasets: no dataset named '{unknown[0]}' in datasets")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed may appear once")
        if self.baseline is None:  # resolved here, so the run's spec.yaml names the baseline it was reported against
            self.baseline = next((m.name for m in self.methods if m.kind == "prompt"), None)
        elif self.baseline not in {m.name for m in self.methods}:
            raise ValueError(f"baseline: no method named '{self.baseline}' in methods")
        if self.tune is not None:
            tuned = next((m for m in self.methods if m.name == self.tune.method), None)
            if tuned is None:
                raise ValueError(f"tune.method: no method named '{self.tune.method}' in methods")
            module = method_module(tuned.kind)
            if not hasattr(module, "training_job"):
                raise ValueError(f"tune.method: '{tuned.name}' (kind {tuned.kind}) does not train; nothing to tune")
            if self.tune.metric.startswith("eval_") and not tuned.options.get("validation"):
                raise ValueError(f"tune.metric: '{self.tune.metric}' is a validation score; give method "
                                 f"'{tuned.name}' a validation: section (e.g. {{fraction: 0.2, every_steps: 4}})")
            for key, dist in self.tune.space.items():  # one entry at a time (the layer pair together): name a typo
                try:
                    one = representative_params({key: dist})
                    module.Options.model_validate(apply_params(tuned.options, one))
                except ValidationError as exc:
                    raise ValueError(f"tune.space.{key}: {_first_error(exc)}") from None
        return self


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.S)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ""
    for part in err["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = {"extra_forbidden": "unknown field", "missing": "required field is missing"}.get(err["type"], err["msg"])
    msg = msg.removeprefix("Value error, ")
    inner = _FIELD_PREFIX.match(msg)  # our validators say "field: problem"; fold the field into loc
    if inner and loc:
        return f"{loc}.{inner.group(1)}: {inner.group(2)}"
    return f"{loc}: {msg}" if loc else msg


def parse_spec(data: Any, source: str = "spec") -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {_first_error(exc)}") from None


def load_spec(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec ({type(exc).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except ValueError as exc:  # a YAML scalar that does not convert, e.g. the date 2001-02-30
        raise SpecError(f"{path}: invalid YAML value: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    return parse_spec(data, str(path))


def dump_spec(spec: ExperimentSpec) -> str:
    """The spec as run, with dataset paths made absolute so ``--resume`` works from anywhere."""
    data = spec.model_dump(mode="json")
    for ds, entry in zip(spec.datasets, data["datasets"]):
        if entry.get("path") is not None:
            entry["path"] = str(ds.resolved_path.resolve())
    return yaml.safe_dump(data, sort_keys=False)
