"""Search efficiency on the tiny model (not a timed test): OptunaSearch (TPE) + ASHA vs random search.

Both searches run in one process on the same space, the same number of
trials and the same training budget per trial, from
``experiments/tune_quickstart.yaml`` (its learning-rate range reaches values
where the tiny model diverges). The baseline is a plain random search: no
early stopping of any kind (``tune.stop_diverged: false``), so a diverged
trial trains to the end, as it did before apimig's divergence guard. ASHA's
settings and the metric (the held-out loss) are the spec's. Printed for each:
total training steps spent (a stopped trial counts the steps it had
reported), steps spent on diverged trials, trial states and the best metric;
for the baseline also what it would have spent with the divergence guard alone
(each diverged trial stopped at the step the guard flagged, which every
diverged row records). Then, over all seeds, the ratios of steps and the mean
best metric. The searches' seeds differ per repetition; the training seed does
not, so a configuration trains the same way in every search.

    python bench/tune_efficiency.py [--trials 16] [--max-steps 64] [--seeds 0 1 2] [--pretrain-steps 300]

By default the tiny model is first pretrained (300 steps of language modelling
on HumanEval's code), so that its early validation losses rank trials roughly
as its final ones do, as a real model's do; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.spec import load_spec, parse_spec  # noqa: E402
from orchestrator.tuning import tune_experiment  # noqa: E402
from tune.search import TrialRow  # noqa: E402


def variant(base: dict, search: str, scheduler: dict, trials: int, max_steps: int, seed: int) -> dict:
    spec = {**base, "tune": {**base["tune"], "search": search, "scheduler": scheduler, "num_samples": trials,
                             "seed": seed, "stop_diverged": search != "random"}}
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
    from jobs.inference.models import load_model

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
    # The same search with the divergence guard alone: each diverged trial ends at the step it was flagged.
    guarded = total - sum(r.steps - r.diverged_at for r in rows if r.diverged_at is not None)
    states = {s: sum(r.state == s for r in rows) for s in sorted({r.state for r in rows})}
    best_value = best.metric if best else float("nan")
    print(f"{name:<22} steps {total:5d}  on diverged trials {diverged:4d}  best {best_value:.4f}  "
          f"states {states}  ({seconds:.0f} s)" + (f"; with the divergence guard {guarded} steps"
                                                   if guarded != total else ""))
    return {"steps": total, "diverged": diverged, "guarded": guarded, "best": best_value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "experiments" / "tune_quickstart.yaml")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="the samplers' seeds: both searches run once per seed (the best of one search is noisy)")
    ap.add_argument("--pretrain-steps", type=int, default=300,
                    help="first pretrain the tiny model this many steps and tune that (0: the spec's model, "
                         "random weights, whose early losses say little about its final ones)")
    ap.add_argument("--only", choices=["optuna", "random"],
                    help="run one of the two searches (exploring settings; the comparison needs both)")
    args = ap.parse_args()

    base = load_spec(args.spec).model_dump(mode="json", exclude_none=True)
    keep = tempfile.TemporaryDirectory()
    if args.pretrain_steps:
        base["model"] = {"name": pretrained_tiny(args.pretrain_steps, Path(keep.name) / "tiny-pretrained")}
    asha = base["tune"]["scheduler"]
    if asha.get("kind") != "asha":
        sys.exit(f"{args.spec}: tune.scheduler must be asha for this comparison")
    out: dict[str, list[dict]] = {"optuna": [], "random": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, search, scheduler in (("optuna (TPE) + ASHA", "optuna", asha),
                                            ("random, no stopping", "random", {"kind": "fifo"})):
                if args.only not in (None, search):
                    continue
                print(f"seed {seed}, {name}: {args.trials} trials of {args.max_steps} steps, metric "
                      f"{base['tune']['metric']}, scheduler {scheduler}", flush=True)
                spec = parse_spec(variant(base, search, scheduler, args.trials, args.max_steps, seed))
                run_dir = Path(tmp) / f"{search}-{seed}"
                run_dir.mkdir()
                t = time.perf_counter()
                rows, best = tune_experiment(spec, run_dir, echo=lambda _: None)
                out[search].append(describe(f"seed {seed}, {name}", rows, best, time.perf_counter() - t))
                print((run_dir / "tune" / "trials.md").read_text(), flush=True)
    if args.only:
        return
    print("\nseed  optuna+ASHA steps  best     random steps  (with guard)  best")
    for seed, o, r in zip(args.seeds, out["optuna"], out["random"]):
        print(f"{seed:4d}  {o['steps']:17d}  {o['best']:.4f}  {r['steps']:12d}  {r['guarded']:12d}  {r['best']:.4f}")
    total = {k: {f: sum(x[f] for x in v) for f in ("steps", "diverged", "guarded")} for k, v in out.items()}
    print(f"all seeds: optuna+ASHA {total['optuna']['steps']} steps ({total['optuna']['diverged']} on diverged "
          f"trials), random {total['random']['steps']} steps ({total['random']['diverged']} on diverged trials; "
          f"{total['random']['guarded']} with the divergence guard alone)")
    mean = {k: statistics.fmean(x["best"] for x in v) for k, v in out.items()}
    wins = sum(o["best"] <= r["best"] for o, r in zip(out["optuna"], out["random"]))
    ours = max(total["optuna"]["steps"], 1)
    print(f"steps: random / optuna+ASHA = {total['random']['steps'] / ours:.2f}x (target >= 2x); random with the "
          f"divergence guard alone / optuna+ASHA = {total['random']['guarded'] / ours:.2f}x (what TPE and ASHA "
          f"add to the guard); mean best metric over {len(args.seeds)} seeds: optuna {mean['optuna']:.4f} vs "
          f"random {mean['random']:.4f} ({'equal or better' if mean['optuna'] <= mean['random'] else 'worse'}); "
          f"optuna's best equal or better in {wins} of {len(args.seeds)} seeds")


if __name__ == "__main__":
    main()
