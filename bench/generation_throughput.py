"""Generation throughput on the real model: the path before this change against today's, same prompts.

    .venv/bin/python bench/generation_throughput.py            # 24 held-out migration prompts, basic, 256 tokens
    .venv/bin/python bench/generation_throughput.py --loop     # also the plain one-prompt-at-a-time loop

Three ways to answer the same greedy prompts with SmolLM2-135M-Instruct:

- ``loop``: one ``model.generate`` per prompt to ``max_new_tokens`` (what a script without apimig does);
- ``baseline``: apimig's generation as it was before (batches of 8 in the callers' order, every
  sequence runs to ``max_new_tokens``), kept here verbatim as :func:`baseline_generate`;
- ``current``: :func:`jobs.inference.generation.generate` (longest-first batches, each sequence stops
  when its code block closes).

Prints answers/s, generated tokens/s, the ratios, and how many answers differ from the baseline up to
the stop point (must be 0 under greedy decoding: a current answer is a prefix of the baseline's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def baseline_generate(model, tokenizer, chats, max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """The generation path before the stop-at-answer change (greedy): fixed batches, no early stop."""
    import torch

    texts = [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in chats]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            with torch.no_grad():
                ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def loop_generate(model, tokenizer, chats, max_new_tokens: int) -> list[str]:
    import torch

    out = []
    for chat in chats:
        text = tokenizer.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True)
        batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--strategy", default="basic")
    ap.add_argument("--loop", action="store_true", help="also time the one-prompt-at-a-time loop")
    args = ap.parse_args()

    import torch

    from data.migrations import load_migrations
    from data.prompts import build_messages
    from jobs.inference.generation import GenerationOptions, generate
    from jobs.inference.models import load_model

    model, tok = load_model({"name": "smollm2-135m"})
    chats = [build_messages(r, args.strategy) for r in load_migrations(split="test")[:args.prompts]]
    print(f"SmolLM2-135M-Instruct, {len(chats)} prompts ({args.strategy}), greedy, max_new_tokens "
          f"{args.max_new_tokens}, torch threads {torch.get_num_threads()}")

    def count(texts):
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    results = {}
    t0 = time.perf_counter()
    base = baseline_generate(model, tok, chats, args.max_new_tokens)
    results["baseline"] = (time.perf_counter() - t0, count(base))
    t0 = time.perf_counter()
    cur = [s[0] for s in generate(model, tok, chats, GenerationOptions(max_new_tokens=args.max_new_tokens),
                                  0, args.strategy)]
    results["current"] = (time.perf_counter() - t0, count(cur))
    if args.loop:
        t0 = time.perf_counter()
        loop = loop_generate(model, tok, chats, args.max_new_tokens)
        results["loop"] = (time.perf_counter() - t0, count(loop))

    for name, (secs, tokens) in results.items():
        print(f"{name:9s} {secs:7.1f} s  {len(chats) / secs:6.3f} answers/s  {tokens / secs:7.1f} generated tokens/s")
    b, c = results["baseline"][0], results["current"][0]
    print(f"current vs baseline: {b / c:.2f}x answers/s")
    if "loop" in results:
        print(f"current vs loop: {results['loop'][0] / c:.2f}x answers/s; baseline vs loop: {results['loop'][0] / b:.2f}x")
    differ = [i for i, (x, y) in enumerate(zip(base, cur)) if not x.startswith(y.rstrip())]
    print(f"answers that differ from the baseline up to the stop point: {len(differ)} of {len(chats)}"
          + (f" (indices {differ})" if differ else ""))


if __name__ == "__main__":
    main()
