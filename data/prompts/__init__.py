"""Prompt strategies and answer parsing: the one place where a record becomes chat messages.

A strategy is a template file beside this module, filled with ``str.format``
from the record (see :func:`template_fields`):

- ``basic``: the task alone;
- ``with_context``: the task and the update's documentation (``docs``, else
  its description);
- ``with_rules``: the task and the mined rules that match its code, passed
  as ``extra={"rules": text}`` (``jobs.rules``' ``RuleSet.describe()``);
- ``cot``: reason in prose first, then the code; its answer is the LAST
  python block (reasoning may quote code before it).

``teacher_pairs.txt`` is not a strategy: it asks a teacher model for
old/new code pairs (``jobs.methods.teacher``). Every method
that asks a model for code (prompting, the fine-tuning methods' evaluation,
the teacher) goes through :func:`build_messages`, so the model sees the same
format at training and at evaluation time. Rendering to the model's own chat
format is the tokenizer's ``apply_chat_template``.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

from data.records import TaskRecord

PROMPTS_DIR = Path(__file__).parent
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


NOT_STRATEGIES = frozenset({"system", "teacher_pairs"})
LAST_BLOCK = frozenset({"cot"})  # strategies whose answer follows the reasoning
NO_RULES = "(no mined rule matches this code)"


def strategies() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt") if p.stem not in NOT_STRATEGIES)


@cache
def _template(name: str) -> str:
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        raise KeyError(f"unknown prompt strategy '{name}' (known: {', '.join(strategies())})")
    return path.read_text(encoding="utf-8")


def template_fields(record: TaskRecord, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    u = record.update
    fields = {
        "prompt": record.prompt.strip(),
        "library": u.library,
        "old_api": u.old_api or "",
        "new_api": u.new_api or "",
        "version": u.version or "",
        "description": u.description.strip(),
        "docs": (u.docs or u.description).strip(),
        "old_code": (record.old_code or "").strip(),
        "rules": NO_RULES,
    }
    fields.update(extra or {})
    return fields


def shows_update(strategy: str) -> bool:
    """Whether the strategy's prompt tells the model about the record's API update (its docs or description).

    CodeUpdateArena's UPass/SPass are defined only for prompts that carry the update (or the control's).
    """
    return any(f"{{{name}}}" in _template(strategy) for name in ("docs", "description", "new_api"))


def build_messages(record: TaskRecord, strategy: str = "basic", extra: dict[str, Any] | None = None) -> list[dict]:
    """System + user messages for ``record`` under ``strategy`` (``extra`` fills strategy-specific fields)."""
    user = _template(strategy).format(**template_fields(record, extra)).strip()
    return [{"role": "system", "content": _template("system").strip()}, {"role": "user", "content": user}]


def answer_block(code: str) -> str:
    """An answer in the format the trainers teach and ``extract_answer`` reads: one python block."""
    return f"```python\n{code.strip()}\n```"


def extract_code(text: str, last: bool = False) -> str | None:
    """The code in a model's answer, or ``None`` where it holds none.

    In order: the first fenced block tagged ``python``/``py``/``python3``;
    else the first fenced block of any tag (an unclosed fence runs to the end
    of the text, as when generation hits its token limit); else the text
    inside ``<answer>...</answer>`` (an unclosed tag runs to the end). With
    ``last`` (the ``cot`` strategy), the last block instead of the first at
    both fenced steps. Every prompt asks for a fenced block, so prose without
    one, and an empty block, are no answer (``None``): scored as a failure,
    never as code that "ran". A bad answer is otherwise judged by the executor.
    """
    blocks = _FENCE.findall(text)
    if last:
        blocks.reverse()
    python = [body for tag, body in blocks if tag.lower() in ("python", "py", "python3")]
    if python or blocks:
        body = python[0] if python else blocks[0][1]
    else:
        answer = re.search(r"<answer>(.*?)(?:</answer>|\Z)", text, re.S)
        if answer is None:
            return None
        body = answer.group(1)
    body = body.strip("\n")
    return body + "\n" if body.strip() else None


def answer_complete(text: str, strategy: str = "basic") -> bool:
    """Whether generation can stop: the answer's code block has closed (or ReCode's ``</answer>`` came).

    ``cot`` reasons first and may quote code before its answer, so only ``</answer>`` ends it early;
    whatever follows the stop point is prose nobody reads (:func:`extract_code` never looks past it).
    """
    if "</answer>" in text:
        return True
    return strategy not in LAST_BLOCK and text.count("```") >= 2


def extract_answer(text: str, strategy: str = "basic") -> str | None:
    """:func:`extract_code` as ``strategy`` asks for it (the last block for ``cot``)."""
    return extract_code(text, last=strategy in LAST_BLOCK)


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True
