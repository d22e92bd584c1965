"""``python -m orchestrator`` / ``apimig``: run experiments, re-render reports, list runs.

Exit codes: 0 all jobs done, 1 some job failed or diverged, 2 bad input
(spec, data, arguments), 130 interrupted (resume with ``run --resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator import driver
from orchestrator.manifest import Manifest
from orchestrator.report import render_report
from orchestrator.spec import SpecError, load_spec


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apimig", description="Run and compare API-migration methods on code models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run an experiment spec (or resume a run)")
    run.add_argument("spec", nargs="?", help="experiment YAML file")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run: redo only jobs that are not done")
    run.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--artifacts", metavar="DIR", help="where runs are written (default: $APIMIG_ARTIFACTS or artifacts/)")

    rep = sub.add_parser("report", help="re-render a run's report.md and plots, and print it")
    rep.add_argument("run_dir")

    ls = sub.add_parser("ls", help="list runs")
    ls.add_argument("--artifacts", metavar="DIR")

    val = sub.add_parser("validate", help="check a spec and print its jobs, without running anything")
    val.add_argument("spec")
    return p


def _run(args: argparse.Namespace) -> int:
    if bool(args.spec) == bool(args.resume):
        raise UsageError("run needs exactly one of SPEC or --resume RUN_DIR")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / Manifest.FILE).exists():
            raise UsageError(f"{run_dir}: not a run directory (no {Manifest.FILE})")
        spec, manifest = driver.open_run(run_dir)
        print(f"resuming {run_dir} ({len(manifest.pending())} jobs to do)")
    else:
        spec = load_spec(args.spec)
        run_dir = driver.create_run(spec, driver.artifacts_root(args.artifacts))
        manifest = Manifest.load(run_dir)
        print(f"run directory: {run_dir}")
    try:
        driver.run_experiment(spec, run_dir, manifest, address=args.address)
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: python -m orchestrator run --resume {run_dir}", file=sys.stderr)
        return 130
    print()
    print(render_report(run_dir))
    print(f"report: {run_dir / 'report.md'}")
    states = manifest.counts()
    return 0 if set(states) == {"done"} else 1


def _report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / Manifest.FILE).exists():
        raise UsageError(f"{run_dir}: not a run directory (no {Manifest.FILE})")
    print(render_report(run_dir))
    return 0


def _ls(args: argparse.Namespace) -> int:
    root = driver.artifacts_root(args.artifacts)
    rows = []
    for path in sorted(root.glob(f"*/*/{Manifest.FILE}")):
        try:
            m = Manifest.load(path.parent)
        except (OSError, json.JSONDecodeError):
            continue
        states = ", ".join(f"{k}={v}" for k, v in sorted(m.counts().items()))
        rows.append(f"{path.parent}  {m.data.get('created_at', '?')}  {states}")
    print("\n".join(rows) if rows else f"no runs under {root}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from orchestrator.plan import plan_jobs

    spec = load_spec(args.spec)
    jobs = plan_jobs(spec)
    print(f"{args.spec}: ok, {len(jobs)} jobs: " + ", ".join(j.id for j in jobs))
    return 0


COMMANDS = {"run": _run, "report": _report, "ls": _ls, "validate": _validate}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SpecError, UsageError, driver.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
