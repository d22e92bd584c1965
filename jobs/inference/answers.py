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
    """One entry per record: its code (one sample), a list of codes (several samples), or ``None``.

    ``texts[i]`` holds record i's sampled answers; a ``None`` sample (a request that failed) is
    dropped, and a record with no sample left has no answer.
    """
    out: list[Code] = []
    for samples in texts:
        codes = [extract_answer(t, strategy) for t in samples if t is not None]
        if not codes:
            out.append(None)
        else:
            out.append(codes[0] if len(samples) == 1 else codes)
    return out
