"""Method ``prompt``: ask a model (local or behind an HTTP API) to migrate each record's code.

Options: ``strategy`` (a template in ``data/prompts``: basic, with_context,
with_rules, cot), ``backend`` (``jobs.inference.backends.BackendConfig``; default:
the ``hf`` backend with the spec's model) and ``generation`` (max_new_tokens,
temperature, num_samples, ...: ``jobs.inference.generation.GenerationOptions``). With
``num_samples > 1`` each record gets a list of samples (pass@k).

``with_rules`` shows the mined rules that match each record's code: the rule
library at ``rules_path``, else rules mined from the built-in migration set's
train split (so held-out cases are not described by their own rules).
"""

from __future__ import annotations

import json
from typing import Literal, Sequence

from pydantic import Field

from data.prompts import NO_RULES, build_messages, shows_update
from data.records import TaskRecord
from jobs.inference.answers import codes_from_texts
from jobs.inference.backends import Backend, BackendConfig, make_backend
from jobs.inference.generation import GenerationOptions
from jobs.methods.registry import MethodContext, MethodOptions, MethodOutput

Strategy = Literal["basic", "with_context", "with_rules", "cot"]


class Options(MethodOptions):
    strategy: Strategy = "basic"
    backend: BackendConfig = Field(default_factory=BackendConfig)
    generation: GenerationOptions = Field(default_factory=lambda: GenerationOptions(max_new_tokens=512))
    rules_path: str | None = None  # a rule library (JSON, jobs.rules); default: mine the train split


def load_rules(rules_path: str | None):
    """The rule library ``with_rules`` describes: a saved one, or mined from the built-in train split."""
    from jobs.rules import RuleSet, mine_rules, pairs_from_records

    if rules_path:
        return RuleSet.load(rules_path)
    from data.migrations import load_migrations

    return mine_rules(pairs_from_records(load_migrations(split="train")))


def rules_text(ruleset, record: TaskRecord) -> str:
    """The rules whose before-pattern occurs in the record's old code (or prompt), described for the model."""
    from jobs.rules import rules_matching

    text = rules_matching(record.old_code or record.prompt, ruleset).describe().strip()
    return text or NO_RULES


def chats_for(records: Sequence[TaskRecord], strategy: str, ruleset=None) -> list[list[dict]]:
    chats = []
    for rec in records:
        extra = {"rules": rules_text(ruleset, rec)} if strategy == "with_rules" else None
        chats.append(build_messages(rec, strategy, extra))
    return chats


def answer(records: Sequence[TaskRecord], strategy: str, backend: Backend, ruleset=None, chats=None
           ) -> tuple[list[str | list[str] | None], list[dict]]:
    """Codes for ``records`` (a list of samples per record when the backend samples several) and raw answers."""
    chats = chats if chats is not None else chats_for(records, strategy, ruleset)
    replies = backend.generate(chats, strategy)
    raw = [{"id": rec.id, "answers": list(texts)} for rec, texts in zip(records, replies)]
    return codes_from_texts(replies, strategy), raw


def gpus(options: Options) -> float:
    """With ``use_gpu``: an in-process model (hf, vllm) needs the task's GPU; actors and HTTP servers bring their own."""
    return 1.0 if options.backend.kind in ("hf", "vllm") and not options.backend.workers else 0.0


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    ruleset = load_rules(options.rules_path) if options.strategy == "with_rules" else None
    backend = make_backend(options.backend, context.model, generation=options.generation, use_gpu=context.use_gpu,
                           seed=context.seed)
    chats = chats_for(records, options.strategy, ruleset)
    try:
        codes, raw = answer(records, options.strategy, backend, ruleset, chats)
        # Only a model this process (or its actors) holds can be read token by token; HTTP backends cannot.
        scorer = getattr(backend, "score", None) if context.scorecard else None
        scores = scorer(records, chats) if scorer else None
    finally:
        backend.close()
    files = {"answers.jsonl": "".join(json.dumps(row) + "\n" for row in raw)}
    return MethodOutput(codes=codes, metrics=backend.stats().as_metrics(), files=files,
                        shows_update=shows_update(options.strategy), scores=scores)
