"""Unlearning's learning rate on the real model: how far the forget set falls, and whether answers survive.

    .venv/bin/python bench/unlearn_lr.py                    # lr:steps 1e-5:10 5e-5:10 2e-4:10
    .venv/bin/python bench/unlearn_lr.py 1e-3:20            # the tiny model's setting

SmolLM2-135M-Instruct, the study's edit (``max_edits: 2`` from the migrations' train split, NPO with the
shipped retain weight), each setting from the same untouched weights. Prints the seconds of unlearning,
the change of the forget and retain sets' mean per-token log-likelihood, and how many of 8 held-out
migration prompts still get an answer holding code (greedy, 160 tokens).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", default=["1e-5:10", "5e-5:10", "2e-4:10"], help="lr:steps")
    args = parser.parse_args()
    import torch

    from data.migrations import load_migrations
    from data.prompts import build_messages
    from jobs.editing.hparams import load_hparams
    from jobs.editing.requests import requests_from_records
    from jobs.editing.unlearn import apply_unlearning, mean_logprob
    from jobs.inference.answers import codes_from_texts
    from jobs.inference.generation import GenerationOptions, generate
    from jobs.inference.models import load_model
    from jobs.methods import edit

    model, tokenizer = load_model({"name": "smollm2-135m"})
    options = edit.Options(algorithm="unlearn", max_edits=2, edit_data=[{"kind": "migrations", "split": "train"}])
    train = load_migrations(split="train")
    requests = requests_from_records(train, options.paraphrases, options.locality, options.max_edits)
    batches = edit.make_batches(train, requests, options, tokenizer)
    forget = [p for b in batches for p in b.forget]
    retain = [p for b in batches for p in b.retain]
    held_out = [build_messages(r, "basic") for r in load_migrations(split="test")[:8]]

    def with_code() -> int:
        texts = generate(model, tokenizer, held_out, GenerationOptions(max_new_tokens=160), 0, "basic")
        return sum(bool(c and c.strip()) for c in codes_from_texts(texts, "basic"))

    f0, r0 = mean_logprob(model, tokenizer, forget), mean_logprob(model, tokenizer, retain)
    print(f"{len(forget)} forget / {len(retain)} retain pairs; untouched: forget {f0:.3f}, retain {r0:.3f} "
          f"nats/token, {with_code()}/8 answers with code", flush=True)
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()}
    for setting in args.settings:
        lr, steps = setting.split(":")
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(untouched[n])
        hp = load_hparams("unlearn", None, "smollm2-135m").model_copy(
            update={"unlearn_lr": float(lr), "unlearn_steps": int(steps)}).resolve(model)
        t0 = time.perf_counter()
        for batch in batches:
            apply_unlearning(model, tokenizer, batch.forget, batch.retain, hp)
        seconds = time.perf_counter() - t0
        print(f"lr {lr} x {steps} steps: {seconds:.0f} s; forget {mean_logprob(model, tokenizer, forget) - f0:+.2f}, "
              f"retain {mean_logprob(model, tokenizer, retain) - r0:+.2f} nats/token; "
              f"{with_code()}/8 answers with code", flush=True)


if __name__ == "__main__":
    main()
