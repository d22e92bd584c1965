"""Edit throughput: edits/second for one set of edit batches, serial vs Ray-parallel on all cores, in one run.

Edits come from the built-in migrations; each batch holds ``--batch-size``
requests and runs on its own model copy. The key-covariance cache is warmed
first so neither side pays for the statistics. The parallel side includes its
workers warmed up (started, model loaded) like the serial side; the warm-up time is printed. Also checks that both sides
produce identical weight deltas, and prints seconds per ROME edit.

    python bench/edit_throughput.py                      # tiny model, ROME, 8 edits in batches of 1
    python bench/edit_throughput.py --algorithm memit --edits 16 --batch-size 4
    python bench/edit_throughput.py --model Qwen/Qwen2.5-Coder-0.5B --gpu   # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.migrations import load_migrations  # noqa: E402
from jobs.editing.batches import EditBatch, run_batches  # noqa: E402
from jobs.editing.hparams import load_hparams  # noqa: E402
from jobs.editing.requests import requests_from_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--algorithm", default="rome", choices=["rome", "memit"])
    ap.add_argument("--edits", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()

    import torch

    spec = {"name": args.model}
    hp = load_hparams(args.algorithm, None, args.model)
    reqs = requests_from_records(load_migrations(), limit=args.edits)
    batches = [EditBatch(i, tuple(reqs[s:s + args.batch_size]))
               for i, s in enumerate(range(0, len(reqs), args.batch_size))]
    print(f"{args.algorithm} on {args.model}: {len(reqs)} edits in {len(batches)} batches, {args.cpus} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    run_batches(spec, args.algorithm, hp, batches[:1], parallel=False, use_gpu=args.gpu)  # warm caches

    t0 = time.perf_counter()
    serial = run_batches(spec, args.algorithm, hp, batches, parallel=False, use_gpu=args.gpu)
    t_serial = time.perf_counter() - t0

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()  # cold: worker start, imports and model loads, one batch per core
        run_batches(spec, args.algorithm, hp, batches[:args.cpus], parallel=True, use_gpu=args.gpu,
                    gpus_per_task=1.0 / args.cpus)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        parallel = run_batches(spec, args.algorithm, hp, batches, parallel=True, use_gpu=args.gpu,
                               gpus_per_task=1.0 / args.cpus)
        t_parallel = time.perf_counter() - t0
    finally:
        ray.shutdown()
    same = all(torch.equal(a.deltas[n], b.deltas[n]) for a, b in zip(serial, parallel) for n in a.deltas)
    n = len(reqs)
    print(f"serial:   {n / t_serial:.3f} edits/s ({t_serial:.1f} s)")
    print(f"parallel: {n / t_parallel:.3f} edits/s ({t_parallel:.1f} s)  speed-up {t_serial / t_parallel:.2f}x")
    print(f"parallel warm-up (worker start + model load, {args.cpus} batches): {t_cold:.1f} s, not counted")
    print(f"seconds per {args.algorithm} edit (serial, incl. metrics): {sum(r.seconds for r in serial) / n:.2f}")
    print(f"identical deltas serial vs parallel: {same}; load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
