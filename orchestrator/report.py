"""Reports: ``report.md`` (a method x dataset table) and ``plots/*.png``, rebuilt from the run's files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from data.io import atomic_write_bytes, atomic_write_text
from orchestrator.manifest import Manifest

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


def results_table(metrics: dict, manifest: Manifest) -> str:
    """Markdown table: one row per job, in the manifest's (= the spec's) order."""
    pass_k = sorted({k for per_ds in metrics.values() for v in per_ds.values() for k in v
                     if k.startswith("pass@") and k != "pass@1"}, key=lambda k: int(k[5:]))
    columns = list(COLUMNS[:5]) + pass_k + list(COLUMNS[5:]) + [c for c in OPTIONAL if _any_has(metrics, c)]
    lines = ["| method | dataset | state | " + " | ".join(columns) + " |", "|---" * (3 + len(columns)) + "|"]
    for job_id, job in manifest.jobs.items():
        method, _, dataset = job_id.partition("__")
        values = metrics.get(method, {}).get(dataset)
        cells = [_fmt(c, values.get(c)) for c in columns] if values else ["-"] * len(columns)
        lines.append(f"| {method} | {dataset} | {job['state']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    parts = [f"# {manifest.data['experiment']} — run {manifest.data['run_id']}", "", results_table(metrics, manifest)]
    failures = [(jid, j.get("error", "")) for jid, j in manifest.jobs.items() if j["state"] in ("failed", "diverged")]
    warnings = [f"- `{m}` on `{ds}` trained on the records it is scored on (`train_data` empty or `self`): its "
                f"numbers measure memorisation, not migration" for m, per_ds in metrics.items()
                for ds, v in per_ds.items() if v and v.get("trains_on_eval_records")]
    if warnings:
        parts += ["", "## Warnings", ""] + warnings
    parts += ["", METRIC_NOTE]
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
