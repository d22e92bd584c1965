"""``compare RUN_DIR...``: one table and one plot across runs, with the same intervals as a run's report.

Runs are comparable only on the same records: a dataset scored on different records in two runs (another
``limit``, another split, another file) is refused with the counts, never silently averaged over. Runs that
differ in what produced their numbers besides the methods are refused too, in one line naming the first
difference: the model (weights hash, else name), the evaluation settings (the spec's ``eval:`` section),
the records' contents (the dataset hashes in ``provenance.json``) or the code (its code hash). ``force``
compares them anyway and lists the differences at the top. What a run's files do not record (runs made
before provenance held dataset and weights hashes, runs without ``provenance.json``) is left unchecked and
said so in a note.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.io import atomic_write_text
from jobs.evaluation.intervals import direction
from orchestrator import provenance
from orchestrator.manifest import Manifest
from orchestrator.outcomes import Outcomes, fmt_difference, fmt_interval, load_outcomes, paired, run_spec
from orchestrator.report import save_figure

# ``eval:`` settings that change no record's outcome (throughput, report wording): not compared.
EVAL_NOT_COMPARED = ("pool_size", "nll_margin")
PACKAGES_SHOWN = 8


class CompareError(ValueError):
    """Runs that cannot be compared; ``str()`` says why in one line."""


@dataclass
class Difference:
    """One thing two or more runs differ in besides their methods: ``what`` (``model``, ``eval.timeout_s``,
    ``records of dataset 'migrations'``, ``code``) and each run's value as shown."""

    what: str
    values: list[tuple[str, str]]

    def __str__(self) -> str:
        return f"{self.what}: " + " vs ".join(f"{label} {value}" for label, value in self.values)


class RunsDiffer(CompareError):
    """Runs that differ in model, evaluation settings, records or code; ``force`` compares them anyway."""

    def __init__(self, differences: list[Difference]):
        self.differences = differences
        more = f"; also in {', '.join(d.what for d in differences[1:])}" if len(differences) > 1 else ""
        super().__init__(f"runs differ in {differences[0]}{more} (--force compares them anyway)")


@dataclass
class _Run:
    label: str
    path: Path
    prov: dict[str, Any] | None
    spec: dict[str, Any]
    scored: set[str] = field(default_factory=set)  # datasets with a finished job


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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _load_run(run_dir: Path, label: str) -> _Run:
    try:
        prov = provenance.load(run_dir)
    except ValueError as exc:
        raise CompareError(str(exc)) from None
    path = run_dir / "spec.yaml"
    try:
        spec = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {}
    except yaml.YAMLError:
        raise CompareError(f"{path}: invalid YAML") from None
    return _Run(label, run_dir, prov, spec if isinstance(spec, dict) else {})


def _differs(values: list[tuple[str, Any]]) -> bool:
    return any(v != values[0][1] for _, v in values[1:])


# ---------------------------------------------------------------------------------------------- the checks

def _model_of(run: _Run) -> dict[str, Any]:
    """``{"name", "sha256", "sha256_prefix", "why"}``: from provenance, else ``model.json``, else the spec."""
    model = (run.prov or {}).get("model")
    if isinstance(model, dict):
        why = model.get("weights_source") if "sha256" in model else "its provenance predates weights hashes"
        return {"name": model.get("name"), "sha256": model.get("sha256"),
                "sha256_prefix": model.get("sha256_prefix"), "why": why}
    info = _read_json(run.path / "model.json") or {}
    spec = info.get("spec") if isinstance(info.get("spec"), dict) else None
    name = (spec or run.spec.get("model") or {}).get("name", "tiny")
    return {"name": name, "sha256": None, "sha256_prefix": info.get("sha256_prefix"), "why": "no provenance.json"}


def _show_model(m: dict[str, Any]) -> str:
    if m["sha256"]:
        return f"{m['name']} (sha256 {provenance.short(m['sha256'])})"
    if m["sha256_prefix"]:
        return f"{m['name']} (GGUF sha256 {m['sha256_prefix']})"
    return str(m["name"])


def _check_model(runs: list[_Run], diffs: list[Difference], notes: list[str]) -> None:
    models = [(r.label, _model_of(r)) for r in runs]
    if all(m["sha256"] for _, m in models):
        key = "sha256"
    else:
        unhashed = [f"{label} ({m['why']})" for label, m in models if not m["sha256"]]
        key = "sha256_prefix" if all(m["sha256_prefix"] for _, m in models) else "name"
        notes.append(f"model weights: no hash in {', '.join(unhashed)}; compared by "
                     f"{'GGUF file hash' if key == 'sha256_prefix' else 'name'} only")
    if _differs([(label, m[key]) for label, m in models]):
        diffs.append(Difference("model", [(label, _show_model(m)) for label, m in models]))


def _eval_settings(run: _Run) -> dict[str, Any] | None:
    """The run's ``eval:`` section with this version's defaults filled in (a spec written before a setting
    existed ran with its default), or None without ``spec.yaml``."""
    from pydantic import ValidationError

    from orchestrator.spec import EvalSpec

    if not run.spec:
        return None
    raw = run.spec.get("eval") or {}
    try:
        return EvalSpec.model_validate(raw).model_dump(mode="json")
    except ValidationError:  # a setting since removed: compare what the file says
        return dict(raw)


def _check_eval(runs: list[_Run], diffs: list[Difference], notes: list[str]) -> None:
    settings = [(r.label, _eval_settings(r)) for r in runs]
    missing = [label for label, s in settings if s is None]
    if missing:
        notes.append(f"evaluation settings: no spec.yaml in {', '.join(missing)}")
    settings = [(label, s) for label, s in settings if s is not None]
    if len(settings) < 2:
        return
    keys = dict.fromkeys(k for _, s in settings for k in s if k not in EVAL_NOT_COMPARED)
    for key in keys:
        values = [(label, s.get(key, "(not set)")) for label, s in settings]
        if _differs(values):
            diffs.append(Difference(f"eval.{key}", [(label, json.dumps(v)) for label, v in values]))


def _check_datasets(runs: list[_Run], diffs: list[Difference], notes: list[str]) -> None:
    names = list(dict.fromkeys(d for r in runs for d in sorted(r.scored)))
    unhashed: dict[str, None] = {}
    for name in names:
        scored = [r for r in runs if name in r.scored]
        if len(scored) < 2:
            continue
        entries = [(r.label, ((r.prov or {}).get("datasets") or {}).get(name)) for r in scored]
        lacking = [label for label, e in entries if not (isinstance(e, dict) and e.get("sha256"))]
        if lacking:
            unhashed.update(dict.fromkeys(lacking))
            continue
        if _differs([(label, e["sha256"]) for label, e in entries]):
            shown = [(label, f"{e.get('records')} records (sha256 {provenance.short(e['sha256'])})")
                     for label, e in entries]
            diffs.append(Difference(f"records of dataset '{name}'", shown))
    if unhashed:
        notes.append(f"record contents: no dataset hashes in {', '.join(unhashed)} (provenance from before they "
                     f"were recorded, or none); compared by record ids only")


def _code_of(prov: dict[str, Any]) -> str:
    git = prov.get("git") or {}
    commit = (git.get("commit") or "no git")[:7] + ("+dirty" if git.get("dirty") else "")
    return f"{commit} (sources {prov.get('code_hash') or 'n/a'})"


def _check_code(runs: list[_Run], diffs: list[Difference], notes: list[str]) -> None:
    without = [r.label for r in runs if r.prov is None or not r.prov.get("code_hash")]
    with_prov = [r for r in runs if r.prov is not None and r.prov.get("code_hash")]
    if without:
        notes.append(f"code: no provenance.json in {', '.join(without)}")
    if len(with_prov) < 2:
        return
    scopes = {provenance.is_complete(r.prov) for r in with_prov}
    if len(scopes) > 1:  # a hash of *.py files (older provenance) against one of every file
        older = [r.label for r in with_prov if not provenance.is_complete(r.prov)]
        notes.append(f"code: the code hash of {', '.join(older)} covers *.py only (older provenance), not "
                     f"comparable with the others'")
        return
    if _differs([(r.label, r.prov.get("code_hash")) for r in with_prov]):
        diffs.append(Difference("code", [(r.label, _code_of(r.prov)) for r in with_prov]))


def _package_note(runs: list[_Run], notes: list[str]) -> None:
    """Versions (and Python) that differ: not refused, as every rerun on another machine would be, but said."""
    with_prov = [r for r in runs if r.prov is not None]
    if len(with_prov) < 2:
        return
    first, changed = with_prov[0], []
    for other in with_prov[1:]:
        a, b = first.prov.get("packages") or {}, other.prov.get("packages") or {}
        complete = provenance.is_complete(first.prov) and provenance.is_complete(other.prov)
        names = dict.fromkeys([*a, *b]) if complete else [n for n in a if n in b]
        pairs = [("python", first.prov.get("python"), other.prov.get("python"))]
        pairs += [(n, a.get(n), b.get(n)) for n in names]
        changed += [f"{n} {x or 'not installed'} vs {y or 'not installed'} ({other.label})"
                    for n, x, y in pairs if x != y and (x or y)]
    if changed:
        more = f", and {len(changed) - PACKAGES_SHOWN} more" if len(changed) > PACKAGES_SHOWN else ""
        notes.append(f"versions that differ from {first.label} (not refused): "
                     f"{', '.join(changed[:PACKAGES_SHOWN])}{more}")


def check_runs(runs: list[_Run]) -> tuple[list[Difference], list[str]]:
    """``(differences, notes)``: what the runs differ in besides their methods, and what could not be checked."""
    diffs: list[Difference] = []
    notes: list[str] = []
    _check_model(runs, diffs, notes)
    _check_eval(runs, diffs, notes)
    _check_datasets(runs, diffs, notes)
    _check_code(runs, diffs, notes)
    _package_note(runs, notes)
    return diffs, notes


# ---------------------------------------------------------------------------------------------- the table

def _provenance_line(run: _Run) -> str:
    p = run.prov
    if p is None:
        return f"| {run.label} | n/a | {_show_model(_model_of(run))} | n/a | n/a |"
    datasets = p.get("datasets")
    data = ", ".join(f"{name} {provenance.short((e or {}).get('sha256'), 8)}" for name, e in datasets.items()) \
        if isinstance(datasets, dict) else "n/a"
    return f"| {run.label} | {_code_of(p)} | {_show_model(_model_of(run))} | {data} | {p.get('seeds')} |"


def compare_runs(run_dirs: list[Path], out_dir: Path, *, force: bool = False) -> str:
    """Write ``compare.md`` and ``compare.png`` into ``out_dir``; return the markdown.

    Raises :class:`CompareError` for runs over different records, :class:`RunsDiffer` for runs that differ
    in model, evaluation settings, record contents or code, unless ``force``: then the differences head
    the markdown."""
    if len(run_dirs) < 2:
        raise CompareError("compare needs at least two run directories")
    runs: dict[str, dict[tuple[str, str], Outcomes]] = {}
    bases: dict[str, str | None] = {}
    infos: list[_Run] = []
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
        info = _load_run(run_dir, label)
        info.scored = {dataset for _, dataset in runs[label]}
        infos.append(info)
    _check_same_records(runs)
    diffs, notes = check_runs(infos)
    if diffs and not force:
        raise RunsDiffer(diffs)

    lines = [f"# Comparison of {len(runs)} runs", ""]
    if diffs:
        lines += ["**Compared with --force: these runs differ in more than their methods, so a difference below "
                  "may come from these:**", ""] + [f"- {d}" for d in diffs] + [""]
    if notes:
        lines += ["Not checked or not refused:", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["| run | code | model | records (sha256) | seeds |", "|---|---|---|---|---|"]
    lines += [_provenance_line(info) for info in infos]
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
