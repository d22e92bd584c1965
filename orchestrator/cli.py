"""``python -m orchestrator`` / ``apimig``: run experiments, re-render reports, list runs.

Exit codes: 0 all jobs done, 1 some job failed or diverged, 2 bad input
(spec, data, arguments), 130 interrupted (resume with ``run --resume``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from orchestrator import driver, storage
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
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run: redo only jobs that are not done "
                     "(a directory or a URI such as s3://bucket/runs/<experiment>/<run-id>)")
    run.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--artifacts", metavar="DIR|URI",
                     help="where runs are written: a directory, or a URI (s3://, gs://, file://) that every "
                     "node can reach (default: $APIMIG_ARTIFACTS or artifacts/)")

    rep = sub.add_parser("report", help="re-render a run's report.md and plots, and print it")
    rep.add_argument("run_dir")

    ls = sub.add_parser("ls", help="list runs")
    ls.add_argument("--artifacts", metavar="DIR")

    tun = sub.add_parser("tune", help="search a method's training parameters (the spec's tune: section)")
    tun.add_argument("spec", nargs="?", help="experiment YAML file with a tune: section")
    tun.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search")
    tun.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    tun.add_argument("--artifacts", metavar="DIR", help="where runs are written (default: $APIMIG_ARTIFACTS or artifacts/)")

    cmp = sub.add_parser("compare", help="one table and plot across runs over the same records, with intervals; "
                         "refuses runs that differ in model, eval settings, record contents or code")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--force", action="store_true", help="compare runs that differ in model, eval settings, "
                     "record contents or code; the differences head the table")
    cmp.add_argument("--out", metavar="DIR", help="where compare.md and compare.png go "
                     "(default: <artifacts>/compare/<time>)")
    cmp.add_argument("--artifacts", metavar="DIR", help="default: $APIMIG_ARTIFACTS or artifacts/")

    val = sub.add_parser("validate", help="check a spec and print its jobs, without running anything")
    val.add_argument("spec")
    return p


def _run(args: argparse.Namespace) -> int:
    if bool(args.spec) == bool(args.resume):
        raise UsageError("run needs exactly one of SPEC or --resume RUN_DIR")
    if args.resume:
        try:
            run_dir, mirror = storage.fetch_run(args.resume)
        except (OSError, ValueError) as exc:  # a URI that does not hold a run, or cannot be reached
            raise UsageError(f"{args.resume}: cannot fetch the run ({str(exc).splitlines()[0]})") from None
        if not (run_dir / Manifest.FILE).exists():
            raise UsageError(f"{run_dir}: not a run directory (no {Manifest.FILE})")
        spec, manifest = storage.open_run(run_dir)
        print(f"resuming {args.resume} ({len(manifest.pending())} jobs to do)")
    else:
        spec = load_spec(args.spec)
        try:
            run_dir, mirror = storage.new_run(spec, storage.artifacts_root(args.artifacts))
        except (OSError, ValueError) as exc:  # unwritable directory, unknown URI scheme, no credentials
            raise UsageError(f"--artifacts: cannot create the run ({str(exc).splitlines()[0]})") from None
        manifest = Manifest.load(run_dir)
        print(f"run directory: {mirror.uri if mirror else run_dir}" + (f" (staged in {run_dir})" if mirror else ""))
    where = mirror.uri if mirror else run_dir
    # `ray job stop` sends SIGTERM (SIGKILL 3 s later): treat it as Ctrl-C so jobs go back to pending.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        driver.run_experiment(spec, run_dir, manifest, address=args.address, mirror=mirror)
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: python -m orchestrator run --resume {where}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(render_report(run_dir))
    if mirror:
        try:
            mirror.push()
        except OSError as exc:
            print(f"error: upload to {mirror.uri} failed ({str(exc).splitlines()[0]}); the run is complete in "
                  f"{run_dir}", file=sys.stderr)
            return 1
    print(f"report: {where}/report.md")
    states = manifest.counts()
    return 0 if set(states) == {"done"} else 1


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / Manifest.FILE).exists():
        raise UsageError(f"{run_dir}: not a run directory (no {Manifest.FILE})")
    print(render_report(run_dir))
    return 0


def _ls(args: argparse.Namespace) -> int:
    root = storage.artifacts_root(args.artifacts)
    rows = []
    for where, text in _manifests(root):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            continue
        states = ", ".join(f"{k}={v}" for k, v in sorted(Manifest(Path("."), data).counts().items()))
        rows.append(f"{where}  {data.get('created_at', '?')}  {states}")
    print("\n".join(rows) if rows else f"no runs under {root}")
    return 0


def _manifests(root: Path | str) -> list[tuple[str, str]]:
    """``(run location, manifest text)`` of every run under a directory or a URI."""
    if not storage.is_uri(root):
        return [(str(path.parent), path.read_text(encoding="utf-8"))
                for path in sorted(Path(root).glob(f"*/*/{Manifest.FILE}"))]
    import pyarrow.fs

    try:
        fs, base = pyarrow.fs.FileSystem.from_uri(str(root))
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{root}: cannot list runs ({str(exc).splitlines()[0]})") from None
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        rel = info.path[len(base.rstrip("/")) + 1:].split("/")
        if info.type == pyarrow.fs.FileType.File and len(rel) == 3 and rel[2] == Manifest.FILE:
            with fs.open_input_stream(info.path) as src:
                out.append((f"{str(root).rstrip('/')}/{rel[0]}/{rel[1]}", src.read().decode("utf-8")))
    return out


def _tune(args: argparse.Namespace) -> int:
    from orchestrator import tuning

    if bool(args.spec) == bool(args.resume):
        raise UsageError("tune needs exactly one of SPEC or --resume RUN_DIR")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "spec.yaml").exists():
            raise UsageError(f"{run_dir}: not a tune run directory (no spec.yaml)")
        spec = load_spec(run_dir / "spec.yaml")
    else:
        spec = load_spec(args.spec)
        if spec.tune is None:
            raise UsageError(f"{args.spec}: no tune: section to search")
        run_dir = tuning.create_tune_run(spec, storage.artifacts_root(args.artifacts))
    print(f"run directory: {run_dir}")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        rows, best = tuning.tune_experiment(spec, run_dir, resume=bool(args.resume), address=args.address)
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: python -m orchestrator tune --resume {run_dir}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print((run_dir / "tune" / "trials.md").read_text())
    if best is None:
        print("no trial finished with a usable metric", file=sys.stderr)
        return 1
    print(f"best: {best.trial_id} {spec.tune.metric}={best.metric:.4f}; runnable spec: {run_dir / 'tune' / 'best_spec.yaml'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from orchestrator.compare import CompareError, compare_runs, default_out_dir

    out = Path(args.out) if args.out else default_out_dir(storage.artifacts_root(args.artifacts))
    try:
        print(compare_runs([Path(d) for d in args.run_dirs], out, force=args.force))
    except CompareError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(f"comparison: {out}/compare.md")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from orchestrator.plan import plan_jobs

    spec = load_spec(args.spec)
    jobs = plan_jobs(spec)
    print(f"{args.spec}: ok, {len(jobs)} jobs: " + ", ".join(j.id for j in jobs))
    return 0


COMMANDS = {"run": _run, "report": _report, "ls": _ls, "validate": _validate, "tune": _tune, "compare": _compare}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SpecError, UsageError, driver.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
