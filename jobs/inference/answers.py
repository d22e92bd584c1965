"""The one answer path: a model's texts become the codes a method returns.

Prompting, the fine-tuning methods (after training) and the editors all call
:func:`codes_from_texts`; how code is found in a text (fences, ``cot``'s last
block, ``<answer>`` tags) is the prompt format's business and lives beside the
templates (``data.prompts.extract_answer``).
"""

from __future__ import annotations

from typing import Sequence

from data.prompts import extract_answer

Code = str | list[str] | None


def codes_from_texts(texts: Sequence[Sequence[str | None]], strategy: str) -> list[Code]:
    """One entry per record: its code or ``None`` (one sample), or one entry per sample (several).

    ``texts[i]`` holds record i's sampled answers. A text with no code in it becomes ``None``: a
    sample drawn and failed. A ``None`` text (a request that failed after its retries) was never
    drawn and is dropped, so pass@k sees fewer samples rather than a made-up failure.
    """
    out: list = []
    for samples in texts:
        codes = [extract_answer(t, strategy) for t in samples if t is not None]
        if len(samples) == 1:
            out.append(codes[0] if codes else None)
        else:
            out.append(codes or None)
    return out
