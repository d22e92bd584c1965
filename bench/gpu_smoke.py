"""Generation on a GPU: apimig's transformers path against vLLM, same prompts (run by bench/gpu_smoke.sh).

    python bench/gpu_smoke.py [--prompts 24] [--max-new-tokens 256]

Prints, for each engine, the device it ran on, answers/s and generated tokens/s; vLLM's row says why
it was skipped where it cannot run (not installed, no CUDA device).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()

    import torch

    from data.migrations import load_migrations
    from data.prompts import build_messages
    from jobs.inference.backends.vllm import chat_answers, engine, vllm_unavailable
    from jobs.inference.generation import GenerationOptions, generate
    from jobs.inference.models import load_model

    spec = {"name": "smollm2-135m"}
    gen = GenerationOptions(max_new_tokens=args.max_new_tokens, batch_size=32)
    chats = [build_messages(r, "basic") for r in load_migrations(split="test")[:args.prompts]]
    use_gpu = torch.cuda.is_available()
    print(f"{len(chats)} prompts, greedy, max_new_tokens {args.max_new_tokens}; "
          f"GPU: {torch.cuda.get_device_name(0) if use_gpu else 'none'}")

    model, tok = load_model(spec, use_gpu=use_gpu)
    count = lambda texts: sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    generate(model, tok, chats[:2], gen, 0, "basic")  # warm-up (CUDA context, kernels)
    t0 = time.perf_counter()
    hf = [s[0] for s in generate(model, tok, chats, gen, 0, "basic")]
    secs = time.perf_counter() - t0
    print(f"hf   on {model.device}: {secs:6.2f} s  {len(chats) / secs:7.2f} answers/s  {count(hf) / secs:8.1f} tokens/s")
    del model
    if use_gpu:
        torch.cuda.empty_cache()

    reason = vllm_unavailable(use_gpu)
    if reason:
        print(f"vllm skipped: {reason}")
        return
    llm = engine(spec, seed=0, gpu_memory_utilization=0.5)
    chat_answers(llm, chats[:2], gen, 0)  # warm-up
    t0 = time.perf_counter()
    out = [s[0] for s in chat_answers(llm, chats, gen, 0)]
    secs = time.perf_counter() - t0
    print(f"vllm on cuda: {secs:6.2f} s  {len(chats) / secs:7.2f} answers/s  {count(out) / secs:8.1f} tokens/s "
          "(runs to max_new_tokens: no stop at the answer's end)")
    same = sum(a.strip().startswith(b.strip()[:40]) for a, b in zip(out, hf))
    print(f"answers whose first 40 characters match the hf path: {same} of {len(chats)} (greedy; kernels differ)")


if __name__ == "__main__":
    main()
