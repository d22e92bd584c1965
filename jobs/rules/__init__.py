"""Mined API-update rules: mine them from old->new code pairs, store them as JSON, apply them with a codemod.

Public API (other methods code against these names):

- :class:`Rule`, :class:`RuleSet` (``load``, ``save``, ``to_json``, ``describe``);
- :func:`mine_rules` ``(pairs) -> RuleSet`` with pairs ``(old_code, new_code, UpdateInfo | None)``;
- :func:`apply_rules` ``(code, ruleset) -> CodemodResult`` (``.code``, ``.fired``);
- :func:`rules_matching` ``(code, ruleset) -> RuleSet``: the rules whose before-pattern occurs in the code.

File format and rule kinds: docs/rules.md.
"""

from jobs.rules.codemod import CodemodResult, apply_rules, rules_matching
from jobs.rules.mine import mine_rules, pairs_from_records
from jobs.rules.model import KINDS, Rule, RuleSet, RulesFormatError

__all__ = ["KINDS", "CodemodResult", "Rule", "RuleSet", "RulesFormatError", "apply_rules", "mine_rules",
           "pairs_from_records", "rules_matching"]
