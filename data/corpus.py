"""The code the project ships, as a text corpus (deterministic, no download).

The built-in migrations' train variants (prompt, old and new code, tests; the
held-out variants stay unseen) and HumanEval's prompts and canonical
solutions. The tiny model's tokenizer is trained on it, and knowledge editing
takes its key statistics from it by default.
"""

from __future__ import annotations


def code_texts() -> list[str]:
    from data.humaneval import load_humaneval
    from data.migrations import load_migrations

    texts: list[str] = []
    for rec in load_migrations(split="train"):
        texts += [rec.prompt, rec.old_code or "", rec.reference or "", *rec.tests]
    for rec in load_humaneval():
        texts += [rec.prompt, rec.reference or ""]
    return [t for t in texts if t]
