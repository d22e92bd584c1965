"""``compare RUN_DIR...``: one table and one plot across runs, with the same intervals as a run's report.

Runs are comparable only on the same records: a dataset scored on different records in two runs (another
``limit``, another split, another file) is refused with the counts, never silently averaged over.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from data.io import atomic_write_text
from jobs.evaluation.intervals import direction
from orchestrator.manifest import Manifest
from orchestrator.outcomes import Outcomes, fmt_difference, fmt_interval, load_outcomes, paired, run_spec
from orchestrator.report import save_figure


class CompareError(ValueError):
    """Runs that cannot be compared; ``str()`` says why in one line."""


def _label(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"


def _check_same_records(runs: dict[str, dict[tuple[str, str], Outcomes]]) -> None:
    seen: dict[str, tuple[str, frozenset]] = {}  # dataset -> (first run that scored it, its record ids)
    for label, outcomes in runs.items():
        for (method, dataset), o in outcomes.items():
            ids = frozenset(o.ids)
            if dataset not in seen:
                seen[dataset] = (label, ids)
            elif seen[dataset][1] != ids:
                first, theirs = seen[dataset]
                raise CompareError(f"dataset '{dataset}' was scored on different records: {len(theirs)} in {first}, "
                                   f"{len(ids)} in {label} ({method}), {len(theirs & ids)} shared; compare runs "
                                   f"over the same records")


def _provenance_line(run_dir: Path) -> str:
    path = run_dir / "provenance.json"
    if not path.exists():
        return f"| {_label(run_dir)} | n/a | n/a | n/a |"
    p = json.loads(path.read_text(encoding="utf-8"))
    git = p.get("git") or {}
    commit = (git.get("commit") or "no git")[:7] + (" (dirty)" if git.get("dirty") else "")
    commit += f", sources {p.get('code_hash') or 'n/a'}"
    model = p.get("model") or {}
    return (f"| {_label(run_dir)} | {commit} | {model.get('name', 'n/a')} {model.get('sha256_prefix') or ''} | "
            f"{p.get('seeds')} |")


def compare_runs(run_dirs: list[Path], out_dir: Path) -> str:
    """Write ``compare.md`` and ``compare.png`` into ``out_dir``; return the markdown."""
    if len(run_dirs) < 2:
        raise CompareError("compare needs at least two run directories")
    runs: dict[str, dict[tuple[str, str], Outcomes]] = {}
    bases: dict[str, str | None] = {}
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not (run_dir / Manifest.FILE).exists():
            raise CompareError(f"{run_dir}: not a run directory (no {Manifest.FILE})")
        label = _label(run_dir)
        if label in runs:
            raise CompareError(f"{run_dir}: given twice")
        runs[label] = load_outcomes(run_dir)
        bases[label] = run_spec(run_dir)[1]
        if not runs[label]:
            raise CompareError(f"{run_dir}: no finished job to compare")
    _check_same_records(runs)

    lines = [f"# Comparison of {len(runs)} runs", "", "| run | code | model | seeds |", "|---|---|---|---|"]
    lines += [_provenance_line(Path(d)) for d in run_dirs]
    lines += ["", "pass@1 and api_ok with 95% intervals (bootstrap over records and seeds); Δ vs base: pass@1 minus "
              "the run's own base model method on the same records, in points.", "",
              "| method | dataset | run | n | pass@1 | api_ok | Δ vs base |", "|---|---|---|---|---|---|---|"]
    pairs = list(dict.fromkeys(pair for outcomes in runs.values() for pair in outcomes))
    for method, dataset in pairs:
        for label, outcomes in runs.items():
            o = outcomes.get((method, dataset))
            if o is None:
                continue
            base = outcomes.get((bases[label], dataset))
            diff = paired(o, base) if base is not None and method != bases[label] else None
            lines.append(f"| {method} | {dataset} | {label} | {len(o.ids)} | {fmt_interval(o.rate('pass@1'))} | "
                         f"{fmt_interval(o.rate('api_ok'))} | {fmt_difference(diff)} |")
    first = next(iter(runs))
    across = []
    for method, dataset in pairs:
        ref = runs[first].get((method, dataset))
        for label, outcomes in list(runs.items())[1:]:
            o = outcomes.get((method, dataset))
            if ref is not None and o is not None:
                d = paired(o, ref)
                across.append(f"| {method} | {dataset} | {label} | {fmt_difference(d)} | {direction(d)} |")
    if across:
        lines += ["", f"### Each run against `{first}` (same method, paired on the same records)", "",
                  "| method | dataset | run | Δ pass@1 (points) | verdict |", "|---|---|---|---|---|"] + across
    _plot(runs, pairs, out_dir / "compare.png")
    lines += ["", "![pass@1 per method and run](compare.png)"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out_dir / "compare.md", text)
    return text


def default_out_dir(root: Path) -> Path:
    return Path(root) / "compare" / time.strftime("%Y%m%d-%H%M%S")


def _plot(runs: dict[str, dict[tuple[str, str], Outcomes]], pairs: list[tuple[str, str]], path: Path) -> None:
    """Bars of pass@1 with 95% intervals: one group per (method, dataset), one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(pairs) * len(runs)), 3.8))
    for j, (label, outcomes) in enumerate(runs.items()):
        xs, ys, lo, hi = [], [], [], []
        for i, pair in enumerate(pairs):
            est = outcomes[pair].rate("pass@1") if pair in outcomes else None
            if est is not None:
                xs.append(i + j * width)
                ys.append(est.value)
                lo.append(est.value - est.low)
                hi.append(est.high - est.value)
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=label)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(pairs))],
                  [f"{m}\n{ds}" for m, ds in pairs], fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("pass@1 (95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
