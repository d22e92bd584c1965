"""Build GitChameleon's per-problem envs and run every reference solution + visible test inside its env.

    .venv/bin/python bench/gitchameleon_envs.py [--data-dir DIR] [--limit N] [--feasible-only]

Feasible = ``py311_feasibility.csv`` class A, A? or A* (installable on Python 3.11 from PyPI; A?: only
via sdist builds, A*: the hidden test needs nltk_data). B needs an additional pin relaxed, C has no
3.11 wheels. Feasible problems may fall back to the running Python when theirs is missing
(``allow_python_substitution``); the others need their own. ``--pythons 3.11`` pretends only 3.11
exists. torch envs are skipped unless ``--torch`` (``APIMIG_ALLOW_TORCH_ENVS=1``) or already cached.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FEASIBLE = {"A", "A?", "A*"}


def _last_line(text: str) -> str:
    """The exception line of a traceback (with the next line when its message is empty, as nltk's are)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # colour codes (nltk's messages have them)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip(" *\t")]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b:?", lines[i]):
            more = f" {lines[i + 1]}" if lines[i].endswith(":") and i + 1 < len(lines) else ""
            return (lines[i] + more)[:200]
    return lines[-1][:200] if lines else ""


def _cause(res) -> str:
    if res.status == "timeout":
        return f"timeout after {res.duration_s:.0f}s"
    return f"{'test' if res.code_ok else 'solution'} failed: {_last_line(res.stderr) or f'exit {res.returncode}'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="benchmark data (default $APIMIG_DATA_DIR or ../shared/data)")
    ap.add_argument("--limit", type=int, default=None, help="first N problems only")
    ap.add_argument("--cache-dir", default=None, help="env cache (default $APIMIG_ENV_CACHE or ~/.cache/apimig/envs)")
    ap.add_argument("--feasible-only", action="store_true", help="build envs only for CSV-feasible problems")
    ap.add_argument("--pythons", default=None, help="use only these Python versions, e.g. 3.11 (APIMIG_ENV_PYTHONS)")
    ap.add_argument("--as-of", default="dataset", help="resolve unpinned dependencies as of this date "
                    "(default: jobs.sandbox.environments.DATASET_AS_OF['gitchameleon']; 'none': newest releases)")
    ap.add_argument("--torch", action="store_true", help="build torch envs too (APIMIG_ALLOW_TORCH_ENVS=1, ~2-4 GB each)")
    ap.add_argument("--all-failures", action="store_true", help="list failing problems of every class")
    ap.add_argument("--serial", action="store_true", help="build envs one by one, without Ray")
    ap.add_argument("--parallelism", type=int, default=2, help="programs run at once")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per program")
    args = ap.parse_args(argv)
    if args.torch:
        os.environ["APIMIG_ALLOW_TORCH_ENVS"] = "1"
    if args.pythons:
        os.environ["APIMIG_ENV_PYTHONS"] = args.pythons

    from data.gitchameleon import load_gitchameleon
    from data.registry import data_dir
    from jobs.sandbox.environments import available_pythons, build_envs, cache_size_bytes, default_cache_dir, spec_for
    from jobs.sandbox.executor import Program, SubprocessExecutor

    base = Path(args.data_dir) if args.data_dir else data_dir()
    gdir = (base if base.is_absolute() else ROOT / base) / "gitchameleon"  # relative to the repository root
    records = load_gitchameleon(gdir / "dataset.dev.jsonl", args.limit)
    classes = {row["example_id"]: row["class"] for row in csv.DictReader(open(gdir / "py311_feasibility.csv"))}
    cls = {r.id: classes.get(r.meta["example_id"], "?") for r in records}
    feasible = [r for r in records if cls[r.id] in FEASIBLE]
    todo = feasible if args.feasible_only else records
    as_of = None if args.as_of.lower() == "none" else args.as_of
    specs = {r.id: spec_for(r, allow_python_substitution=cls[r.id] in FEASIBLE, exclude_newer=as_of) for r in todo}
    as_of = next(iter(specs.values())).exclude_newer if specs else as_of
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    print(f"problems: {len(records)}  CSV classes: {dict(sorted(Counter(cls.values()).items()))}")
    print(f"feasible per CSV ({'/'.join(sorted(FEASIBLE))}): {len(feasible)}")
    print(f"interpreters: {', '.join(f'{m}={i.version}' for m, i in sorted(available_pythons().items()))}")
    print(f"env cache: {cache_dir}; dependencies as of {as_of or 'now'}; torch envs "
          f"{'on' if os.environ.get('APIMIG_ALLOW_TORCH_ENVS') == '1' else 'off'}")

    t0 = time.monotonic()
    envs = build_envs(specs.values(), cache_dir, parallel=not args.serial)
    env_of = {rid: envs[spec.key] for rid, spec in specs.items()}
    ready = [e for e in envs.values() if e.ready]
    print(f"\nenvs: {len(envs)} distinct for {len(todo)} problems; ready {len(ready)}, "
          f"unsupported {len(envs) - len(ready)} ({time.monotonic() - t0:.0f}s)")
    subst = sum(1 for e in ready if e.substituted)
    if subst:
        print(f"  {subst} ready envs use a substituted Python")
    by_reason: dict[str, list[str]] = defaultdict(list)
    for rid, env in env_of.items():
        if not env.ready:
            by_reason[env.reason].append(rid.removeprefix("gitchameleon-"))
    for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        n_env = len({env_of["gitchameleon-" + i].key for i in ids})
        print(f"  unsupported x{n_env} env(s), {len(ids)} problem(s): {reason}\n      problems: {' '.join(ids)}")

    t1 = time.monotonic()

    def run_reference(r):
        test = r.tests[0]  # the loader already runs `unittest.main()` suites in place
        [res] = SubprocessExecutor(python=env_of[r.id].python_path).run([Program(r.code_for(r.reference), test)], args.timeout)
        return r.id, res

    with ThreadPoolExecutor(args.parallelism) as pool:  # every env's programs share the pool
        results = dict(pool.map(run_reference, [r for r in todo if env_of[r.id].ready]))
    print(f"\nran {len(results)} reference programs in {time.monotonic() - t1:.0f}s")

    def report(name: str, recs: list) -> list:
        passed = sum(1 for r in recs if r.id in results and results[r.id].passed)
        ran = sum(1 for r in recs if r.id in results)
        rate = f"{100 * passed / len(recs):.1f}%" if recs else "n/a"
        print(f"{name}: {passed}/{len(recs)} pass ({rate}); env ready for {ran}, "
              f"pass among those {passed}/{ran}")
        return [r for r in recs if not (r.id in results and results[r.id].passed)]

    failing = report("reference pass rate, feasible problems", feasible)
    if not args.feasible_only:
        failing_all = report("reference pass rate, all problems     ", records)
        for c in sorted(set(cls.values()) - FEASIBLE):
            report(f"  class {c:<2}", [r for r in records if cls[r.id] == c])
        failing = failing_all if args.all_failures else failing
    print(f"\nfailing {'' if args.all_failures else 'feasible '}problems ({len(failing)}):")
    for r in failing:
        env = env_of[r.id]
        cause = _cause(results[r.id]) if r.id in results else f"env unsupported: {env.reason}"
        print(f"  {r.meta['example_id']:>4} [{cls[r.id]}] {r.update.library}=={r.update.version} py{r.env.python}: {cause}")
    print(f"\nenv cache disk use: {cache_size_bytes(cache_dir) / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
