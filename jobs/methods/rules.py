"""Method ``rules``: migrate each record's old code with mined API-update rules (no model).

Rules are mined from ``mine_from`` (by default the training split of the built-in
set: variant 0 of every case, so evaluating on the ``test`` split measures how
the rules generalize to code they were not mined from) plus optional
ReCode-format JSONL files and rule library files. The library used is written
as ``rules.json`` among the job's outputs; which rules fired goes to metrics.
"""

from __future__ import annotations

import collections
from pathlib import Path

from pydantic import Field

from data.records import TaskRecord
from jobs.methods.registry import MethodContext, MethodOptions, MethodOutput
from jobs.rules import RuleSet, apply_rules, mine_rules, pairs_from_records


class Options(MethodOptions):
    # Built-in migration splits to mine from: "train" (variant 0 of each case) or "all" (every variant).
    mine_from: list[str] = Field(default_factory=lambda: ["train"])
    recode: list[str] = Field(default_factory=list)  # ReCode-format JSONL files to mine from as well
    rule_files: list[str] = Field(default_factory=list)  # existing rule libraries (JSON) to add
    min_support: int = Field(1, ge=1)
    # Leave records unchanged when no rule fires (True) or answer None for them (False).
    keep_unchanged: bool = True


def mined_records(options: Options) -> list[TaskRecord]:
    """The records whose old -> new pairs the rules are mined from."""
    from data.migrations import load_migrations
    from data.recode import load_recode

    records: list[TaskRecord] = []
    for source in options.mine_from:
        if source not in ("train", "all"):
            raise ValueError(f"mine_from: unknown source '{source}' (known: train, all)")
        records += load_migrations(split=None if source == "all" else "train")
    for path in options.recode:
        records += load_recode(path)
    return records


def build_ruleset(options: Options, mined: list[TaskRecord] | None = None) -> RuleSet:
    ruleset = mine_rules(pairs_from_records(mined if mined is not None else mined_records(options)))
    extra = [rule for path in options.rule_files for rule in RuleSet.load(Path(path))]
    known = {r.id for r in ruleset}
    ruleset = RuleSet(list(ruleset) + [r for r in extra if r.id not in known], ruleset.meta)
    return ruleset.filter(min_support=options.min_support)


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    from jobs.training.data import learned_from_scored

    mined = mined_records(options)
    ruleset = build_ruleset(options, mined)
    codes: list[str | None] = []
    fired_by_rule: collections.Counter[str] = collections.Counter()
    changed = errors = 0
    for rec in records:
        if not rec.old_code:
            codes.append(None)
            continue
        result = apply_rules(rec.old_code, ruleset)
        errors += result.error is not None
        changed += result.changed
        fired_by_rule.update(set(result.fired))
        codes.append(result.code if result.changed or options.keep_unchanged else None)
    with_old = sum(1 for r in records if r.old_code)
    fired_kinds = collections.Counter(ruleset[rid].kind for rid in fired_by_rule.elements())
    metrics: dict[str, float] = {
        "rules": float(len(ruleset)),
        "rules_fired": float(len(fired_by_rule)),
        "rewritten": changed / with_old if with_old else 0.0,
        "unparsable": float(errors),
        **{f"fired_{kind}": float(n) for kind, n in sorted(fired_kinds.items())},
    }
    if learned_from_scored(mined, records, context.evaluated_ids):
        metrics["trains_on_eval_records"] = 1.0  # rules mined from the very code they are scored on
    return MethodOutput(codes=codes, metrics=metrics, files={"rules.json": ruleset.to_json()})
