"""Training throughput: an apimig ``sft`` job vs. a bare TRL ``SFTTrainer`` script (not a timed test).

Both train the same LoRA adapter on the same model and the same examples
(the built-in migration set as SFT chat examples), with the same batch size,
sequence length, learning rate and number of steps, in one run:

  (a) bare TRL: ``SFTTrainer`` + ``peft_config`` in this process, logging
      every 10 steps, no checkpoints: what a user would write by hand;
  (b) apimig: ``jobs.training.run_training`` with ``jobs.methods.sft.build_trainer``
      on Ray Train (``--workers`` workers), with everything the job adds:
      per-step divergence checks and ``ray.train.report``, checkpoints every
      ``save_steps``, the final adapter report.

Tokens/second = tokens trained on (TRL's ``num_tokens``) / the Trainer's
``train_runtime``, and the ratio b/a (target >= 0.95). With ``--workers 1``
(the default) both use one process with the same number of torch threads (the
baseline runs second, with the thread count the Ray worker reported), so
the ratio is the job's overhead; the Ray start-up and worker imports are
printed separately (end-to-end wall time), not counted in tokens/s.

    python bench/train_throughput.py                 # tiny model, CPU
    python bench/train_throughput.py --steps 40 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def bare_trl(rows: list[dict], options, threads: int) -> dict:
    """The hand-written baseline: one process, TRL + PEFT, nothing else."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from jobs.inference.models import load_model
    from jobs.training.adapters import lora_config

    torch.set_num_threads(threads)
    model, tokenizer = load_model("tiny")
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, learning_rate=options.learning_rate, max_steps=options.max_steps,
            per_device_train_batch_size=options.batch_size, max_length=options.max_length,
            warmup_steps=options.warmup_ratio, max_grad_norm=options.max_grad_norm, logging_steps=10,
            save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0, data_seed=0,
            bf16=False,  # TRL's SFTConfig defaults to bf16 autocast (4x slower on this CPU); apimig trains fp32 on CPU
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer,
                             peft_config=lora_config(options.adapter, model.config.num_hidden_layers))
        out_metrics = trainer.train().metrics
    tokens = next(log["num_tokens"] for log in reversed(trainer.state.log_history) if "num_tokens" in log)
    return {"tokens": float(tokens), "train_runtime": float(out_metrics["train_runtime"])}


def apimig_job(rows: list[dict], options, work_dir: Path) -> dict:
    from jobs.methods import sft
    from jobs.training.runner import TrainJob, run_training

    t0 = time.monotonic()
    outcome = run_training(TrainJob(build=sft.build_trainer, options=options, rows=rows, model={"name": "tiny"},
                                    work_dir=work_dir))
    m = outcome.metrics
    return {"tokens": m["num_tokens"], "train_runtime": m["train_runtime"], "wall": time.monotonic() - t0,
            "threads": int(m["torch_threads"])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers of the apimig job")
    p.add_argument("--logging-steps", type=int, default=1,
                   help="the apimig job's logging_steps (its default 1: the divergence guard checks every step)")
    args = p.parse_args()

    import ray

    from data.migrations import load_migrations
    from jobs.inference.models import model_path
    from jobs.methods import sft
    from jobs.training.data import sft_rows

    model_path("tiny")
    rows = sft_rows(load_migrations())
    options = sft.Options(max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                          num_workers=args.workers, logging_steps=args.logging_steps,
                          max_failures=0)  # the job's defaults otherwise (save_steps 50)
    print(f"tiny model, {len(rows)} examples, {args.steps} steps x batch {args.batch_size} per worker, "
          f"max_length {args.max_length}, apimig workers: {args.workers}, logging_steps {args.logging_steps}, "
          f"{os.cpu_count()} cores")
    ray.init(num_cpus=max(2, args.workers), logging_level="WARNING", include_dashboard=False)
    with tempfile.TemporaryDirectory() as work:
        b = apimig_job(rows, options, Path(work))
    ray.shutdown()
    a = bare_trl(rows, options, b["threads"])  # the same torch thread count as a Ray worker got
    ta, tb = a["tokens"] / a["train_runtime"], b["tokens"] / b["train_runtime"]
    print(f"(a) bare TRL:   {a['tokens']:.0f} tokens in {a['train_runtime']:.2f} s = {ta:.0f} tokens/s "
          f"({b['threads']} torch threads, as in the Ray worker)")
    print(f"(b) apimig sft: {b['tokens']:.0f} tokens in {b['train_runtime']:.2f} s = {tb:.0f} tokens/s "
          f"(end to end with Ray start-up and worker imports: {b['wall']:.1f} s)")
    ratio = tb / ta if args.workers == 1 else tb / (ta * args.workers)
    label = "b/a" if args.workers == 1 else f"b/(a x {args.workers} workers)"
    print(f"ratio {label}: {ratio:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
