"""Search efficiency on the tiny model (not a timed test): OptunaSearch (TPE) + ASHA vs random search.

Both searches run in one process on the same space, the same number of
trials and the same training budget per trial, from
``experiments/tune_quickstart.yaml`` (its learning-rate range reaches values
where the tiny model diverges). The random search uses no early stopping but
the same divergence guard (a diverged trial stops at its first bad step in
both). ASHA's settings and the metric (the held-out loss) are the spec's.
Printed for each: total training steps spent (a stopped trial counts the steps
it had reported), steps spent on diverged trials, trial states and the best
metric; then the ratio of steps.

    python bench/tune_efficiency.py [--trials 16] [--max-steps 64] [--pretrain-steps 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.spec import load_spec, parse_spec  # noqa: E402
from orchestrator.tuning import tune_experiment  # noqa: E402
from tune.search import TrialRow  # noqa: E402


def variant(base: dict, search: str, scheduler: dict, trials: int, max_steps: int) -> dict:
    spec = {**base, "tune": {**base["tune"], "search": search, "scheduler": scheduler, "num_samples": trials}}
    spec["methods"] = [dict(m, options={**m["options"], "max_steps": max_steps})
                       if m["name"] == spec["tune"]["method"] else m for m in base["methods"]]
    return spec


def pretrained_tiny(steps: int, out: Path) -> str:
    """The tiny model after ``steps`` steps of plain language modelling (all weights) on HumanEval's code.

    Fine-tuning a random-weight model mostly saturates it (see docs/benchmarks.md); after this its
    LoRA learning curves look like a real model's. HumanEval, not the migrations: no training example
    of the search is seen here.
    """
    import torch

    from data.humaneval import load_humaneval
    from jobs.models import load_model

    torch.manual_seed(0)
    model, tok = load_model("tiny")
    ids = [tok(r.prompt + (r.reference or ""), truncation=True, max_length=256)["input_ids"]
           for r in load_humaneval()]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pick = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = [ids[i] for i in torch.randint(len(ids), (8,), generator=pick).tolist()]
        x = torch.full((len(batch), max(map(len, batch))), tok.pad_token_id)
        mask = torch.zeros_like(x)
        for i, row in enumerate(batch):
            x[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        loss = model(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"tiny model pretrained for {steps} steps on HumanEval (last loss {loss.item():.3f}): {out}", flush=True)
    return str(out)


def describe(name: str, rows: list[TrialRow], best: TrialRow | None, seconds: float) -> dict:
    total = sum(r.steps for r in rows)
    diverged = sum(r.steps for r in rows if r.state == "diverged")
    states = {s: sum(r.state == s for r in rows) for s in sorted({r.state for r in rows})}
    best_value = best.metric if best else float("nan")
    print(f"{name:<22} steps {total:5d}  on diverged trials {diverged:4d}  best {best_value:.4f}  "
          f"states {states}  ({seconds:.0f} s)")
    return {"steps": total, "best": best_value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "experiments" / "tune_quickstart.yaml")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=64)
    ap.add_argument("--pretrain-steps", type=int, default=0,
                    help="first pretrain the tiny model this many steps and tune that (0: the spec's model)")
    args = ap.parse_args()

    base = load_spec(args.spec).model_dump(mode="json", exclude_none=True)
    keep = tempfile.TemporaryDirectory()
    if args.pretrain_steps:
        base["model"] = {"name": pretrained_tiny(args.pretrain_steps, Path(keep.name) / "tiny-pretrained")}
    asha = base["tune"]["scheduler"]
    if asha.get("kind") != "asha":
        sys.exit(f"{args.spec}: tune.scheduler must be asha for this comparison")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, search, scheduler in (("optuna (TPE) + ASHA", "optuna", asha),
                                        ("random, no early stop", "random", {"kind": "fifo"})):
            print(f"{name}: {args.trials} trials of {args.max_steps} steps, metric {base['tune']['metric']}, "
                  f"scheduler {scheduler}", flush=True)
            spec = parse_spec(variant(base, search, scheduler, args.trials, args.max_steps))
            run_dir = Path(tmp) / search
            run_dir.mkdir()
            t = time.perf_counter()
            rows, best = tune_experiment(spec, run_dir, echo=lambda _: None)
            out[search] = describe(name, rows, best, time.perf_counter() - t)
            print((run_dir / "tune" / "trials.md").read_text(), flush=True)
    o, r = out["optuna"], out["random"]
    print(f"steps: random / optuna+ASHA = {r['steps'] / max(o['steps'], 1):.2f}x (target >= 2x); "
          f"best metric optuna {o['best']:.4f} vs random {r['best']:.4f} "
          f"({'equal or better' if o['best'] <= r['best'] else 'worse'})")


if __name__ == "__main__":
    main()
