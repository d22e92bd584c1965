"""Generation settings and batched text generation with a local transformers model (the ``hf`` path).

:class:`GenerationOptions` is the one generation-settings type: every method that
asks a model for text has a ``generation:`` section of this type (prompting and
the teacher for any backend, the fine-tuning methods after training, the editors).
:func:`generate` is used by the prompting method's ``hf`` backend, by the
fine-tuning methods to answer after training and by the editors' free-generation
metrics. Prompts are chat messages rendered with the tokenizer's chat template.
Non-finite logits (a known failure of fp16 models) are replaced before sampling
(transformers' ``remove_invalid_values``), so sampling never crashes the device.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt


class GenerationOptions(BaseModel):
    """How answers are sampled. HTTP backends send ``max_new_tokens`` as the API's ``max_tokens``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    max_new_tokens: PositiveInt = 256
    temperature: NonNegativeFloat = 0.0  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    num_samples: PositiveInt = 1  # answers per prompt (pass@k)
    # Local generation: prompts per generate() call; None = as many as the KV-cache budget allows
    # (auto_batch_size). Decoding a small model is bound by reading its weights once per step, so on a
    # CPU a batch of 32 costs little more per step than a batch of 8.
    batch_size: PositiveInt | None = None
    # Local generation: end a sequence once its answer is complete (data.prompts.answer_complete), not
    # at max_new_tokens; the tokens before the stop point are the same either way.
    stop_at_answer: bool = True


MAX_AUTO_BATCH = 64
CPU_KV_BUDGET = 2 * 2**30  # bytes of KV cache a CPU job may hold; GPUs: a share of their free memory
GPU_KV_SHARE = 0.3


def auto_batch_size(model, tokens_per_sequence: int) -> int:
    """Prompts per batch so that the batch's KV cache fits the device's budget (1..MAX_AUTO_BATCH)."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
    hidden, n_heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not (layers and heads and hidden and n_heads):
        return 8
    head_dim = getattr(config, "head_dim", None) or hidden // n_heads
    param = next(model.parameters())
    per_token = 2 * layers * heads * head_dim * param.element_size()  # keys and values, every layer
    if param.device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(param.device)
        budget = GPU_KV_SHARE * free
    else:
        budget = CPU_KV_BUDGET
    return max(1, min(MAX_AUTO_BATCH, int(budget // max(1, per_token * tokens_per_sequence))))


def render(tokenizer, messages: Sequence[dict]) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


class AnswerComplete:
    """A transformers stopping criterion: per sequence, true once its new text holds a complete answer."""

    def __init__(self, tokenizer, prompt_length: int, strategy: str):
        self.tokenizer, self.prompt_length, self.strategy = tokenizer, prompt_length, strategy

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        from data.prompts import answer_complete

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([answer_complete(t, self.strategy) for t in texts], device=input_ids.device)


def generate(model, tokenizer, chats: Sequence[Sequence[dict]], settings: GenerationOptions = GenerationOptions(),
             seed: int = 0, strategy: str | None = None) -> list[list[str]]:
    """``num_samples`` completions (decoded, prompt removed) for each chat, in order; ``seed`` fixes sampling.

    With ``strategy`` (the prompt's) and ``settings.stop_at_answer``, each sequence ends when its answer
    is complete instead of running to ``max_new_tokens``. Prompts are batched longest first, so a batch
    holds prompts of similar length (little padding) and answers come back in the callers' order.
    """
    import torch
    from transformers import StoppingCriteriaList

    texts = [render(tokenizer, chat) for chat in chats]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    sample = settings.temperature > 0
    out: list[list[str]] = [[] for _ in texts]
    longest = max(lengths, default=0) + settings.max_new_tokens
    size = settings.batch_size or max(1, auto_batch_size(model, longest) // settings.num_samples)
    model.eval()
    try:
        for start in range(0, len(texts), size):
            members = order[start:start + size]
            batch = tokenizer([texts[i] for i in members], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            torch.manual_seed(seed + start)
            stops = None
            if strategy is not None and settings.stop_at_answer:
                stops = StoppingCriteriaList([AnswerComplete(tokenizer, batch["input_ids"].shape[1], strategy)])
            with torch.no_grad():
                ids = model.generate(
                    stopping_criteria=stops,
                    **batch,
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=sample,
                    temperature=settings.temperature if sample else None,
                    top_p=settings.top_p if sample else None,
                    top_k=None,
                    num_return_sequences=settings.num_samples,
                    remove_invalid_values=True,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = ids[:, batch["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
            n = settings.num_samples
            for j, i in enumerate(members):
                out[i] = decoded[j * n:(j + 1) * n]
    finally:
        tokenizer.padding_side = side
    return out
