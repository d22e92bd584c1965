"""Reports: ``report.md`` (a method x dataset table) and ``plots/*.png``, rebuilt from the run's files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from data.io import atomic_write_bytes, atomic_write_text
from jobs.evaluation.intervals import direction, verdict
from orchestrator.manifest import Manifest
from orchestrator.outcomes import (
    FORGETTING_KINDS,
    RATES,
    Outcomes,
    fmt_difference,
    fmt_interval,
    load_outcomes,
    paired,
    run_spec,
)
from orchestrator.plan import split_job_id

COLUMNS = ("n", "answered", "syntax_ok", "exec_ok", "pass@1", "exact_match", "edit_sim", "api_ok")
OPTIONAL = ("unsupported", "train_time_s")  # shown only where some job has them, like pass@k for k > 1
# Knowledge-editing scores (teacher-forced "tf_" as EasyEdit reports them, and by free generation "gen_").
EDITING = ("n_edits", "tf_efficacy", "tf_generalization", "tf_locality", "gen_efficacy", "gen_generalization",
           "gen_locality", "seconds_per_edit")


METRIC_NOTE = (
    "Every rate is over all `n` records: a record without an answer, or whose answer holds no code, fails every "
    "metric; `answered` counts the records that got code. `exec_ok`: the code ran and defined what the tests "
    "call. `api_ok`: new API used and old one gone, over the records where that is decidable statically "
    "(n/a otherwise).")


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
            elif found is not None and c in RATES:
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


def plot_pass_at_1(metrics: dict, path: Path) -> None:
    """Grouped bars: pass@1 of every method, one group per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(metrics)
    datasets = sorted({ds for per_ds in metrics.values() for ds in per_ds})
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(methods) * max(1, len(datasets))), 3.5))
    width = 0.8 / max(1, len(datasets))
    for j, ds in enumerate(datasets):
        values = [(metrics[m].get(ds) or {}).get("pass@1") for m in methods]
        xs = [i + j * width for i in range(len(methods))]
        ax.bar(xs, [v or 0.0 for v in values], width=width, label=ds)
        for x, v in zip(xs, values):
            ax.text(x, (v or 0.0) + 0.02, "n/a" if v is None else f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks([i + width * (len(datasets) - 1) / 2 for i in range(len(methods))], methods)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("pass@1")
    ax.set_title("pass@1 per method")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def differences(outcomes: dict[tuple[str, str], Outcomes], base: str | None) -> dict[tuple[str, str], object]:
    """Each method's pass@1 minus the baseline's, paired on the same records: ``{(method, dataset): Estimate}``."""
    if base is None:
        return {}
    return {(m, ds): paired(o, outcomes[(base, ds)]) for (m, ds), o in outcomes.items()
            if m != base and (base, ds) in outcomes}


def baseline_section(diffs: dict, base: str, kinds: dict[str, str], outcomes: dict | None = None) -> str:
    """A table of the paired differences and one sentence per method, from the numbers. ``Δ exec_ok`` is
    there because a small model can sit at pass@1 0 on both sides (HumanEval at 135M), where the code still
    running is the change left to see."""
    if not diffs:
        return ""
    outcomes = outcomes or {}
    lines = [f"## Against the base model (`{base}`)", "",
             f"pass@1 minus `{base}`'s on the same records, in points, with its 95% interval (paired bootstrap "
             "over records and seeds). On a dataset without an API update (HumanEval) a drop is **forgetting**.",
             "", "| method | dataset | Δ pass@1 (points) | verdict | Δ exec_ok (points) |", "|---|---|---|---|---|"]
    for (m, ds), d in diffs.items():
        ran = None
        if (m, ds) in outcomes and (base, ds) in outcomes:
            ran = paired(outcomes[(m, ds)], outcomes[(base, ds)], "exec_ok")
        lines.append(f"| {m} | {_dataset_label(ds, kinds)} | {fmt_difference(d)} | {direction(d)} | "
                     f"{fmt_difference(ran)} |")
    lines += ["", "In one sentence per method:", ""]
    for method in dict.fromkeys(m for m, _ in diffs):
        parts = [f"on {_dataset_label(ds, kinds)} {verdict(d, f'`{base}`')}" for (m, ds), d in diffs.items()
                 if m == method]
        lines.append(f"- **{method}**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _dataset_label(dataset: str, kinds: dict[str, str]) -> str:
    return f"{dataset} (forgetting)" if kinds.get(dataset) in FORGETTING_KINDS else dataset


def plot_update_vs_forgetting(diffs: dict, kinds: dict[str, str], path: Path) -> bool:
    """One point per method: pass@1 change on the first update dataset (y) against the change on the first
    forgetting dataset (x), with 95% intervals. False (nothing drawn) without both kinds of dataset."""
    datasets = list(dict.fromkeys(ds for _, ds in diffs))
    update = next((ds for ds in datasets if kinds.get(ds) not in FORGETTING_KINDS), None)
    forget = next((ds for ds in datasets if kinds.get(ds) in FORGETTING_KINDS), None)
    points = [(m, diffs[(m, update)], diffs[(m, forget)]) for m in dict.fromkeys(m for m, _ in diffs)
              if diffs.get((m, update)) is not None and diffs.get((m, forget)) is not None]
    if update is None or forget is None or not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for m, y, x in points:
        ax.errorbar(x.value * 100, y.value * 100, xerr=[[(x.value - x.low) * 100], [(x.high - x.value) * 100]],
                    yerr=[[(y.value - y.low) * 100], [(y.high - y.value) * 100]], fmt="o", capsize=3)
        ax.annotate(m, (x.value * 100, y.value * 100), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(f"Δ pass@1 on {forget} (points; < 0 = forgetting)")
    ax.set_ylabel(f"Δ pass@1 on {update} (points)")
    ax.set_title("update success against forgetting, vs the base model")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


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
    warnings = [f"- `{m}` on `{ds}` trained on the records it is scored on (`train_data` empty or `self`): its "
                f"numbers measure memorisation, not migration" for m, per_ds in metrics.items()
                for ds, v in per_ds.items() if v and v.get("trains_on_eval_records")]
    if warnings:
        parts += ["", "## Warnings", ""] + warnings
    parts += ["", METRIC_NOTE + " Rates show `value [95% interval]`: a bootstrap over records, and over seeds "
              "where a method ran with several. `wall_s`: predict + evaluate, summed over seeds."]
    diffs = differences(outcomes, base)
    section = baseline_section(diffs, base, kinds, outcomes) if base else ""
    if section:
        parts += ["", section]
    if plot_update_vs_forgetting(diffs, kinds, run_dir / "plots" / "update_vs_forgetting.png"):
        parts += ["", "![update success against forgetting](plots/update_vs_forgetting.png)"]
    editing = editing_table(metrics)
    if editing:
        parts += ["", "## Knowledge editing", "", editing]
    if failures:
        parts += ["", "## Problems", ""] + [f"- `{jid}`: {err}" for jid, err in failures]
    if metrics:
        plot_pass_at_1(metrics, run_dir / "plots" / "pass_at_1.png")
        parts += ["", "![pass@1 per method](plots/pass_at_1.png)"]
    text = "\n".join(parts) + "\n"
    atomic_write_text(run_dir / "report.md", text)
    return text
