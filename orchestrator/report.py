"""Reports: ``report.md`` (a method x dataset table) and ``plots/*.png``, rebuilt from the run's files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data.io import atomic_write_text
from jobs.evaluation.intervals import direction, verdict
from orchestrator.manifest import Manifest
from orchestrator.outcomes import (
    CONTINUOUS,
    FORGETTING_KINDS,
    RATES,
    Outcomes,
    fmt_difference,
    fmt_interval,
    load_outcomes,
    method_families,
    nll_direction,
    nll_margin,
    nll_verdict,
    paired,
    run_spec,
)
from orchestrator.plan import split_job_id
from orchestrator.plots import plot_pass_at_1, plot_update_vs_forgetting, save_figure  # noqa: F401 (compare)

COLUMNS = ("n", "answered", "syntax_ok", "exec_ok", "pass@1", "exact_match", "edit_sim", "api_ok")
# Shown only where some job has them, like pass@k for k > 1: the likelihood scorecard (methods that hold a
# model), records whose environment could not be built, training time.
OPTIONAL = ("prefers_new", "ref_nll", "unsupported", "train_time_s")
# Knowledge-editing scores (teacher-forced "tf_" as EasyEdit reports them, and by free generation "gen_").
EDITING = ("n_edits", "tf_efficacy", "tf_generalization", "tf_locality", "gen_efficacy", "gen_generalization",
           "gen_locality", "seconds_per_edit")


METRIC_NOTE = (
    "Every rate is over all `n` records: a record without an answer, or whose answer holds no code, fails every "
    "metric; `answered` counts the records that got code. `exec_ok`: the code ran and defined what the tests "
    "call. `api_ok`: new API used and old one gone, over the records whose update can be checked statically "
    "(decided by the record; there, no code or unparsable code fails; n/a otherwise). Likelihood scorecard (teacher-forced, methods that hold a model; n/a elsewhere): "
    "`prefers_new` the new code is more likely than the old after the same prompt (records with both); "
    "`ref_nll` the reference code's mean NLL in nats per token.")


def load_metrics(run_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key in ("n", "answered", "unsupported", "n_edits"):
        return str(int(value))
    if key.endswith("_s"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def results_table(metrics: dict, manifest: Manifest, outcomes: dict | None = None) -> str:
    """Markdown table: one row per (method, dataset), in the manifest's (= the spec's) order. Rates carry
    their 95% interval (bootstrap over records, and seeds) where the predictions are there to compute it."""
    outcomes = outcomes or {}
    pass_k = sorted({k for per_ds in metrics.values() for v in per_ds.values() for k in v
                     if k.startswith("pass@") and k != "pass@1"}, key=lambda k: int(k[5:]))
    columns = list(COLUMNS[:5]) + pass_k + list(COLUMNS[5:]) + [c for c in OPTIONAL if _any_has(metrics, c)]
    lines = ["| method | dataset | state | " + " | ".join(columns) + " | wall_s |",
             "|---" * (4 + len(columns)) + "|"]
    for (method, dataset), states in _pairs(manifest).items():
        values = metrics.get(method, {}).get(dataset)
        found = outcomes.get((method, dataset))
        cells = []
        for c in columns:
            if not values:
                cells.append("-")
            elif found is not None and (c in RATES or c in CONTINUOUS) and c in values:
                cells.append(fmt_interval(found.rate(c)))
            else:
                cells.append(_fmt(c, values.get(c)))
        wall = sum(sum(j.get("timings", {}).values()) for j in states)
        lines.append(f"| {method} | {dataset} | {_state(states)} | " + " | ".join(cells) + f" | {wall:.0f} |")
    return "\n".join(lines)


def _pairs(manifest: Manifest) -> dict[tuple[str, str], list[dict]]:
    """The manifest's jobs grouped by (method, dataset): one entry per seed."""
    out: dict[tuple[str, str], list[dict]] = {}
    for job_id, job in manifest.jobs.items():
        method, dataset, _ = split_job_id(job_id)
        out.setdefault((method, dataset), []).append(job)
    return out


def _state(states: list[dict]) -> str:
    names = [j["state"] for j in states]
    if len(set(names)) == 1:
        return names[0] + (f" x{len(names)} seeds" if len(names) > 1 else "")
    return ", ".join(f"{names.count(n)} {n}" for n in dict.fromkeys(names))


def _any_has(metrics: dict, key: str) -> bool:
    return any(key in v for per_ds in metrics.values() for v in per_ds.values())


def differences(outcomes: dict[tuple[str, str], Outcomes], base: str | None,
                metric: str = "pass@1") -> dict[tuple[str, str], object]:
    """Each method's ``metric`` minus the baseline's, paired on the same records: ``{(method, dataset): Estimate}``
    (None where either side lacks the measure, e.g. a model-free method's scorecard)."""
    if base is None:
        return {}
    return {(m, ds): _paired(o, outcomes[(base, ds)], metric) for (m, ds), o in outcomes.items()
            if m != base and (base, ds) in outcomes}


def _paired(a: Outcomes, b: Outcomes, metric: str):
    if np.isnan(a.values[metric]).all() or np.isnan(b.values[metric]).all():
        return None
    return paired(a, b, metric)


def baseline_section(outcomes: dict, base: str, kinds: dict[str, str], margin: float) -> str:
    """The paired differences against the baseline, by measure, with one sentence per method that names the
    measure behind each verdict. Update datasets: pass@1 and the likelihood of the new code. Datasets without
    an update (HumanEval): forgetting, by the NLL of the canonical solutions (it moves where pass@1 sits at
    its floor, as for a 135M model), with Δ pass@1 and Δ exec_ok beside it."""
    d = {metric: differences(outcomes, base, metric) for metric in ("pass@1", "exec_ok", "prefers_new", "ref_nll")}
    if not d["pass@1"]:
        return ""
    update = {k: v for k, v in d["pass@1"].items() if kinds.get(k[1]) not in FORGETTING_KINDS}
    forget = {k: v for k, v in d["pass@1"].items() if kinds.get(k[1]) in FORGETTING_KINDS}
    lines = [f"## Against the base model (`{base}`)", "",
             f"Each method minus `{base}` on the same records, with its 95% interval (rates: Newcombe score "
             "interval, hulled with a paired bootstrap over records and seeds where a method ran with several; "
             f"NLL: paired bootstrap). `ref_nll` is the teacher-forced NLL of the reference code in nats per token "
             f"(lower = the model expects it); a shift beyond ±{margin:.3f} (`eval.nll_margin`) is called beyond "
             "the margin.", ""]
    if update:
        lines += ["| method | dataset | Δ pass@1 (points) | verdict by pass@1 | Δ exec_ok (points) | "
                  "Δ prefers_new (points) | Δ ref_nll (nats) | verdict by ref_nll |", "|---|---|---|---|---|---|---|---|"]
        for key, diff in update.items():
            lines.append(f"| {key[0]} | {key[1]} | {fmt_difference(diff)} | {direction(diff)} | "
                         f"{fmt_difference(d['exec_ok'][key])} | {fmt_difference(d['prefers_new'][key])} | "
                         f"{fmt_difference(d['ref_nll'][key], 'nats')} | {_nll_word(d['ref_nll'][key], margin)} |")
    if forget:
        lines += ["", "### Forgetting (datasets without an API update)", "",
                  "The verdict uses Δ `ref_nll` of the canonical solutions (> 0 = the model finds correct general "
                  "code less likely: forgetting); Δ pass@1 and Δ exec_ok stand beside it.", "",
                  "| method | dataset | Δ ref_nll (nats) | forgetting verdict by ref_nll | Δ pass@1 (points) | "
                  "Δ exec_ok (points) |", "|---|---|---|---|---|---|"]
        for key, diff in forget.items():
            lines.append(f"| {key[0]} | {key[1]} | {fmt_difference(d['ref_nll'][key], 'nats')} | "
                         f"{_nll_word(d['ref_nll'][key], margin)} | {fmt_difference(diff)} | "
                         f"{fmt_difference(d['exec_ok'][key])} |")
    lines += ["", "In one sentence per method (the measure behind each verdict is named):", ""]
    who = f"`{base}`"
    for method in dict.fromkeys(m for m, _ in d["pass@1"]):
        parts = []
        for (m, ds), diff in d["pass@1"].items():
            if m != method:
                continue
            nll = d["ref_nll"][(m, ds)]
            if kinds.get(ds) in FORGETTING_KINDS:
                text = f"on {ds}, forgetting by ref_nll: {nll_verdict(nll, who, margin, 'canonical solutions')}"
                text += f"; by pass@1: {verdict(diff, who)}"
            else:
                text = f"on {ds}, by pass@1: {verdict(diff, who)}"
                if nll is not None:
                    text += f"; by ref_nll: {nll_verdict(nll, who, margin, 'new code')}"
            parts.append(text)
        lines.append(f"- **{method}**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _nll_word(diff, margin: float) -> str:
    """The verdict word for a Δ ref_nll (lower is better), with whether it clears the margin."""
    word = nll_direction(diff)
    if diff is None or word.startswith("no ") or word == "not compared":
        return word
    return f"{word} ({'beyond' if diff.low > margin or diff.high < -margin else 'within'} margin)"


def update_vs_forgetting(outcomes: dict, base: str | None, kinds: dict[str, str], path: Path) -> bool:
    """Plot update success against forgetting (``plots.plot_update_vs_forgetting``) for the first update
    dataset and the first forgetting dataset; False (nothing drawn) without both."""
    datasets = list(dict.fromkeys(ds for _, ds in outcomes))
    update = next((ds for ds in datasets if kinds.get(ds) not in FORGETTING_KINDS), None)
    forget = next((ds for ds in datasets if kinds.get(ds) in FORGETTING_KINDS), None)
    if base is None or update is None or forget is None:
        return False
    by = {metric: differences(outcomes, base, metric) for metric in ("pass@1", "ref_nll")}
    points = {metric: [(m, diffs[(m, update)], diffs[(m, forget)]) for m in dict.fromkeys(m for m, _ in diffs)
                       if diffs.get((m, update)) is not None and diffs.get((m, forget)) is not None]
              for metric, diffs in by.items()}
    if not points["pass@1"] and not points["ref_nll"]:
        return False
    plot_update_vs_forgetting(points["pass@1"], points["ref_nll"], update, forget, path)
    return True


def editing_table(metrics: dict) -> str:
    """Efficacy, generalization and locality of the methods that edited weights; empty when none did."""
    rows = [(m, ds, v) for m, per_ds in metrics.items() for ds, v in per_ds.items() if v and "tf_efficacy" in v]
    if not rows:
        return ""
    lines = ["| method | dataset | " + " | ".join(EDITING) + " |", "|---|---|" + "---|" * len(EDITING)]
    for m, ds, v in rows:
        lines.append(f"| {m} | {ds} | " + " | ".join(_fmt(k, v.get(k)) for k in EDITING) + " |")
    return "\n".join(lines)


def render_report(run_dir: Path) -> str:
    """Write ``report.md`` and its plots; return the markdown."""
    run_dir = Path(run_dir)
    manifest = Manifest.load(run_dir)
    metrics = load_metrics(run_dir)
    found = load_outcomes(run_dir)
    outcomes = {pair: found[pair] for pair in _pairs(manifest) if pair in found}  # the spec's order
    kinds, base = run_spec(run_dir)
    parts = [f"# {manifest.data['experiment']} — run {manifest.data['run_id']}", "",
             results_table(metrics, manifest, outcomes)]
    failures = [(jid, j.get("error", "")) for jid, j in manifest.jobs.items() if j["state"] in ("failed", "diverged")]
    warnings = [f"- **`{m}` on `{ds}` learned from records the run scores** (`train_data`/`edit_data` empty or "
                f"`self`, or rules mined from a split that is evaluated): its numbers measure memorisation, not "
                f"migration" for m, per_ds in metrics.items()
                for ds, v in per_ds.items() if v and v.get("trains_on_eval_records")]
    if warnings:
        parts += ["", "## Warnings", ""] + warnings
    parts += ["", METRIC_NOTE + " Rates show `value [95% interval]`: a score interval (Wilson), hulled with a "
              "bootstrap over records and seeds where a method ran with several. `wall_s`: predict + evaluate, "
              "summed over seeds."]
    from jobs.evaluation.api_check import api_note

    notes = [f"`{name}`: {api_note(kind)}" for name, kind in kinds.items() if api_note(kind)]
    parts += [""] + [f"- {note}" for note in notes] if notes else []
    section = baseline_section(outcomes, base, kinds, nll_margin(run_dir)) if base else ""
    if section:
        parts += ["", section]
    if update_vs_forgetting(outcomes, base, kinds, run_dir / "plots" / "update_vs_forgetting.png"):
        parts += ["", "![update success against forgetting](plots/update_vs_forgetting.png)"]
    editing = editing_table(metrics)
    if editing:
        parts += ["", "## Knowledge editing", "", editing]
    if failures:
        parts += ["", "## Problems", ""] + [f"- `{jid}`: {err}" for jid, err in failures]
    if metrics:
        rates = {pair: o.rate("pass@1") for pair, o in found.items()}
        rates.update({(m, ds): None for m, per_ds in metrics.items() for ds, v in per_ds.items()
                      if v and (m, ds) not in rates})
        plot_pass_at_1(rates, method_families(run_dir), run_dir / "plots" / "pass_at_1.png")
        parts += ["", "![pass@1 per method](plots/pass_at_1.png)"]
    text = "\n".join(parts) + "\n"
    atomic_write_text(run_dir / "report.md", text)
    return text
