"""Throughput of program execution on CodeUpdateArena reference solutions (not a timed test).

Runs the same programs three ways, in one run:
  (a) one fresh ``python`` process per program, serially: the benchmark's own harness;
  (b) apimig's sandbox pool (Ray actors with warm fork servers) on all cores;
  (c) in-process ``exec`` with no isolation, serially: the floor.
Checks that (a) and (b) give the same verdict for every program, and prints
programs/second, the speed-up b/a and how far (b) per core is from (c).

    python bench/eval_throughput.py            # fixed sample of >= 300 programs, every package
    python bench/eval_throughput.py --all      # every program of the file
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.codeupdatearena import load_codeupdatearena  # noqa: E402
from data.registry import data_dir  # noqa: E402
from jobs.sandbox.executor import Program  # noqa: E402
from jobs.sandbox.slots import DEFAULT_PRELOAD, Limits  # noqa: E402


def programs_for(path: Path, with_update: bool) -> list[tuple[str, str, Program]]:
    """(example id, package, program) for every unit test of every reference solution."""
    out = []
    for rec in load_codeupdatearena(path):
        prefix = rec.code_for(rec.reference, with_update=with_update)
        out += [(rec.id, rec.update.library, Program(prefix, test)) for test in rec.tests]
    return out


def sample(items: list, n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    chosen = rng.sample(range(len(items)), min(n, len(items)))
    packages = {items[i][1] for i in chosen}
    for i, item in enumerate(items):  # make sure every package is represented
        if item[1] not in packages:
            chosen.append(i)
            packages.add(item[1])
    return [items[i] for i in sorted(chosen)]


MEMORY_MB = Limits().memory_mb  # the same memory budget for every harness, so verdicts are comparable


def _baseline_address_space() -> int:
    """Address space of an interpreter that imported what programs import (the sandbox's base)."""
    code = f"import {', '.join(m for m in DEFAULT_PRELOAD)}, os; print(open('/proc/self/statm').read().split()[0])"
    pages = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "MPLBACKEND": "Agg"}).stdout
    return int(pages) * os.sysconf("SC_PAGE_SIZE")


def run_fresh_processes(programs: list[Program], timeout_s: float) -> tuple[list[bool], float]:
    import resource

    limit = _baseline_address_space() + MEMORY_MB * 2**20
    set_limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # noqa: E731
    verdicts = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "program.py"
        for p in programs:
            path.write_text(p.code + "\n" + p.test + "\n")
            try:
                proc = subprocess.run([sys.executable, str(path)], cwd=d, capture_output=True, timeout=timeout_s,
                                      env={**os.environ, "MPLBACKEND": "Agg"}, preexec_fn=set_limit)
                verdicts.append(proc.returncode == 0)
            except subprocess.TimeoutExpired:
                verdicts.append(False)
    return verdicts, time.perf_counter() - start


def run_in_process(programs: list[Program], patched: list[str]) -> float:
    """Serial ``exec`` in this process. The updates monkey-patch library modules, so each
    program's changes to them are undone afterwards (cheap dict copies, part of the floor)."""
    import contextlib
    import importlib
    import io

    targets = []
    for name in patched:
        try:
            obj = importlib.import_module(name)
        except ImportError:
            continue
        targets.append(obj)
        if name == "torch":
            targets.append(obj.Tensor)
    import resource

    with open("/proc/self/statm") as fh:
        base = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (base + MEMORY_MB * 2**20, hard))  # same budget as the sandbox
    start = time.perf_counter()
    for p in programs:
        saved = [(t, dict(vars(t))) for t in targets]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                exec(compile(p.code + "\n" + p.test, "<program>", "exec"), {"__name__": "__main__"})
            except BaseException:  # noqa: BLE001 - the floor measures speed, not verdicts
                pass
        for t, before in saved:
            for key in set(vars(t)) - set(before):
                delattr(t, key)
            for key, value in before.items():
                if vars(t).get(key, object()) is not value:
                    setattr(t, key, value)
    elapsed = time.perf_counter() - start
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path, default=data_dir() / "codeupdatearena" / "arena.dev.jsonl")
    ap.add_argument("--all", action="store_true", help="every program instead of the fixed sample")
    ap.add_argument("--n", type=int, default=300, help="sample size (default 300)")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--skip-fresh", action="store_true", help="skip (a); no verdict comparison")
    args = ap.parse_args()

    items = programs_for(args.file, with_update=True)
    items = items if args.all else sample(items, args.n)
    programs = [p for _, _, p in items]
    cores = os.cpu_count() or 1
    print(f"{len(programs)} programs from {len({i for i, _, _ in items})} examples, "
          f"{len({pkg for _, pkg, _ in items})} packages; {cores} cores")

    import ray

    from jobs.sandbox.pool import SandboxPool

    ray.init(num_cpus=cores, logging_level="WARNING", include_dashboard=False)
    t = time.perf_counter()
    pool = SandboxPool.start(size=cores)
    print(f"sandbox pool of {cores} warm servers started in {time.perf_counter() - t:.1f} s "
          f"(isolation: {pool.stats()[0]['isolation']})")
    t = time.perf_counter()
    pool.warm(programs)
    print(f"servers for the programs' imports warmed in {time.perf_counter() - t:.1f} s (once per pool)")
    t = time.perf_counter()
    results = pool.run(programs, args.timeout)
    b_s = time.perf_counter() - t
    b_verdicts = [r.passed for r in results]
    rate_b = len(programs) / b_s
    print(f"(b) apimig sandbox pool, {cores} cores: {rate_b:8.1f} programs/s ({b_s:.1f} s)", flush=True)

    c_s = run_in_process(programs, sorted({pkg for _, pkg, _ in items}))
    rate_c = len(programs) / c_s
    print(f"(c) in-process exec, no isolation, 1 core: {rate_c:8.1f} programs/s ({c_s:.1f} s)")
    print(f"    (b) per core vs (c): {rate_c / (rate_b / cores):.2f}x slower (target <= 2x)")

    examples: dict[str, list[bool]] = {}
    for (ex_id, _, _), ok in zip(items, b_verdicts):
        examples.setdefault(ex_id, []).append(ok)
    passing = sum(all(v) for v in examples.values())
    print(f"examples passing (all sampled tests) with the update: {passing}/{len(examples)} "
          f"= {passing / len(examples):.3f}")
    for ex_id, verdicts in examples.items():
        if not all(verdicts):
            print(f"    failing: {ex_id}")

    if not args.skip_fresh:
        a_verdicts, a_s = run_fresh_processes(programs, args.timeout)
        rate_a = len(programs) / a_s
        print(f"(a) fresh python per program, serial:   {rate_a:8.1f} programs/s ({a_s:.1f} s)")
        print(f"    speed-up (b)/(a): {rate_b / rate_a:.1f}x (target >= 20x)")
        mismatches = [(items[i][0], a, b) for i, (a, b) in enumerate(zip(a_verdicts, b_verdicts)) if a != b]
        print(f"verdicts identical: {not mismatches} ({len(mismatches)} differ)")
        for ex_id, a, b in mismatches:
            print(f"    differs: {ex_id}: fresh process {'pass' if a else 'fail'}, sandbox {'pass' if b else 'fail'}")
    pool.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
