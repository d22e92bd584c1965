"""Per-record outcomes of a run, read back from ``predictions/*.jsonl``, with intervals and paired comparisons.

The report and ``compare`` compute every interval from these files (never from the means in
``metrics.json``), so a rate, its interval and a difference between methods always come from the same records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from jobs.evaluation import intervals
from orchestrator.plan import split_job_id

# Per-record rates with intervals: the column in the predictions rows for each reported metric.
RATES = {"syntax_ok": "syntax_ok", "exec_ok": "exec_ok", "pass@1": "passed", "exact_match": "exact_match",
         "api_ok": "api_ok", "prefers_new": "prefers_new"}
# The likelihood scorecard's continuous measure (nats per token; lower = the model expects the reference code).
CONTINUOUS = {"ref_nll": "ref_nll"}
FORGETTING_KINDS = ("humaneval",)  # datasets without an API update: a change there is forgetting


@dataclass
class Outcomes:
    """One method on one dataset: record ids and a ``(seeds, records)`` matrix per metric (NaN = undecided)."""

    ids: tuple[str, ...]
    seeds: tuple[int | None, ...]
    values: dict[str, np.ndarray]

    def rate(self, metric: str) -> intervals.Estimate | None:
        m = self.values.get(metric)
        return None if m is None else intervals.rate(m, bounded=metric not in CONTINUOUS)


def _value(row: dict, key: str) -> float:
    v = row.get(key)
    return float("nan") if v is None else float(v)


def load_outcomes(run_dir: Path) -> dict[tuple[str, str], Outcomes]:
    """``{(method, dataset): Outcomes}`` from every predictions file of the run, seeds stacked."""
    by_pair: dict[tuple[str, str], list[tuple[int | None, list[dict]]]] = {}
    for path in sorted((Path(run_dir) / "predictions").glob("*.jsonl")):
        method, dataset, seed = split_job_id(path.stem)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        by_pair.setdefault((method, dataset), []).append((seed, rows))
    out = {}
    for pair, runs in by_pair.items():
        ids = tuple(r["id"] for r in runs[0][1])
        for seed, rows in runs[1:]:
            if tuple(r["id"] for r in rows) != ids:
                raise ValueError(f"{pair[0]} on {pair[1]}: seed {seed} was scored on other records than seed "
                                 f"{runs[0][0]}")
        values = {name: np.array([[_value(r, key) for r in rows] for _, rows in runs])
                  for name, key in {**RATES, **CONTINUOUS}.items()}
        out[pair] = Outcomes(ids, tuple(s for s, _ in runs), values)
    return out


def paired(a: Outcomes, b: Outcomes, metric: str = "pass@1") -> intervals.Estimate | None:
    """``a - b`` on the records both were scored on; None where they were not scored on the same records."""
    if set(a.ids) != set(b.ids):
        return None
    order = [b.ids.index(i) for i in a.ids] if a.ids != b.ids else slice(None)
    return intervals.paired_difference(a.values[metric], b.values[metric][:, order], bounded=metric not in CONTINUOUS)


def nll_direction(diff: intervals.Estimate | None) -> str:
    """``direction`` for a Δ ref_nll, where lower is better: ``better`` when the whole interval is below 0."""
    if diff is None:
        return "not compared"
    return intervals.direction(intervals.Estimate(-diff.value, -diff.high, -diff.low, diff.n))


def nll_verdict(diff: intervals.Estimate | None, base: str, margin: float, what: str = "reference code") -> str:
    """The sentence for a Δ ref_nll: the word (lower NLL = better), the shift in nats per token with its
    interval, whether it lies beyond ``margin`` (a detectable shift can be too small to matter), and the
    smallest shift the run could detect where it found none."""
    if diff is None:
        return f"not compared with {base} by NLL of the {what} (no scorecard on both sides)"
    word = nll_direction(diff)
    numbers = f"Δ NLL of the {what} {diff.value:+.3f} nats/token, 95% CI {diff.low:+.3f} to {diff.high:+.3f}"
    if word.startswith("no "):
        return (f"no detectable difference from {base} ({numbers}; shifts under {diff.detectable:.3f} nats/token "
                f"undetectable on these {diff.n} records)")
    beyond = diff.low > margin or diff.high < -margin
    return f"{word} than {base} ({numbers}, {'beyond' if beyond else 'within'} the {margin:.3f}-nat margin)"


def run_spec(run_dir: Path) -> tuple[dict[str, str], str | None]:
    """``({dataset name: kind}, baseline method)`` from the run's own spec copy, where validation resolved both
    (a raw read: a moved dataset file must not stop a report)."""
    data = _spec_data(run_dir)
    kinds = {d["name"]: d.get("kind") or d["name"] for d in data.get("datasets", [])}
    return kinds, data.get("baseline")


def _spec_data(run_dir: Path) -> dict:
    path = Path(run_dir) / "spec.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {}


# Method kinds by family, in the order the report and its plots group them.
FAMILIES = {"oracle and floor": ("reference", "old_api"), "rules and prompting": ("rules", "prompt", "teacher"),
            "fine-tuning": ("sft", "dpo", "grpo", "distill"), "knowledge editing": ("edit",)}


def method_families(run_dir: Path) -> dict[str, str]:
    """``{method name: family}`` from the run's spec, in family order (spec order within a family)."""
    kinds = {m["name"]: m.get("kind") for m in _spec_data(run_dir).get("methods", [])}
    family = {kind: name for name, members in FAMILIES.items() for kind in members}
    ranked = sorted(kinds, key=lambda m: list(FAMILIES).index(family.get(kinds[m], "knowledge editing")))
    return {m: family.get(kinds[m], "other") for m in ranked}


def nll_margin(run_dir: Path) -> float:
    """The spec's ``eval.nll_margin`` (its default where the run's spec predates it)."""
    from orchestrator.spec import EvalSpec

    value = (_spec_data(run_dir).get("eval") or {}).get("nll_margin")
    return float(value) if value is not None else EvalSpec.model_fields["nll_margin"].default


def fmt_interval(est: intervals.Estimate | None) -> str:
    return "n/a" if est is None else f"{est.value:.3f} [{est.low:.2f}, {est.high:.2f}]"


def fmt_difference(est: intervals.Estimate | None, unit: str = "points") -> str:
    """A paired difference: rates in points (x100), ``nats`` raw with 3 decimals."""
    if est is None:
        return "n/a"
    if unit == "nats":
        return f"{est.value:+.3f} [{est.low:+.3f}, {est.high:+.3f}]"
    return f"{est.value * 100:+.1f} [{est.low * 100:+.1f}, {est.high * 100:+.1f}]"
