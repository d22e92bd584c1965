"""Rule and RuleSet: a library of mined API-update rules and its JSON file (schema in docs/rules.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Literal

import libcst as cst
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from data.io import DataFormatError, atomic_write_text

SCHEMA = "apimig.rules/1"
KINDS = ("rename", "module_move", "method_rename", "arg_rename", "arg_add", "arg_remove", "value_change",
         "call_rewrite")


class RulesFormatError(DataFormatError):
    """A rule library file is malformed; the message is one line naming the file and the rule."""


class Rule(BaseModel):
    """One rewrite: code matching ``before`` becomes ``after`` (patterns, see jobs/rules/pattern.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    library: str
    version: str | None = None
    kind: Literal[KINDS]  # type: ignore[valid-type]
    before: str
    after: str
    # Import statements (as written in the new code) that bind the qualified names ``after`` uses.
    imports: tuple[str, ...] = ()
    support: int = Field(1, ge=1)  # how many (old, new) pairs produced this rule
    sources: tuple[str, ...] = ()  # ids of those pairs, where known

    @field_validator("before", "after")
    @classmethod
    def _parses(cls, text: str) -> str:
        try:
            cst.parse_expression(text)
        except cst.ParserSyntaxError:
            raise ValueError(f"not a Python expression: {text!r}") from None
        return text

    @field_validator("imports")
    @classmethod
    def _imports_parse(cls, lines: tuple[str, ...]) -> tuple[str, ...]:
        for line in lines:
            try:
                stmt = cst.parse_statement(line)
            except cst.ParserSyntaxError:
                raise ValueError(f"not an import statement: {line!r}") from None
            if not (isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], (cst.Import, cst.ImportFrom))):
                raise ValueError(f"not an import statement: {line!r}")
        return lines


class RuleSet:
    """An ordered rule library: earlier rules win when two match the same code."""

    def __init__(self, rules: list[Rule] | tuple[Rule, ...] = (), meta: dict | None = None) -> None:
        self.rules = list(rules)
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __getitem__(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def filter(self, min_support: int = 1, libraries: set[str] | None = None) -> "RuleSet":
        keep = [r for r in self.rules if r.support >= min_support and (libraries is None or r.library in libraries)]
        return RuleSet(keep, self.meta)

    def to_json(self) -> str:
        doc = {"schema": SCHEMA, "meta": self.meta, "rules": [r.model_dump(mode="json") for r in self.rules]}
        return json.dumps(doc, indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def from_json(cls, text: str, where: str = "<rules>") -> "RuleSet":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesFormatError(f"{where}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
            raise RulesFormatError(f"{where}: expected an object with a 'rules' list")
        if doc.get("schema", SCHEMA) != SCHEMA:
            raise RulesFormatError(f"{where}: unknown schema '{doc.get('schema')}' (expected '{SCHEMA}')")
        rules = []
        for i, obj in enumerate(doc["rules"]):
            try:
                rules.append(Rule.model_validate(obj))
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or "rule"
                raise RulesFormatError(f"{where}: rules[{i}].{field}: {err['msg']}") from None
        ids = [r.id for r in rules]
        dup = next((x for x in ids if ids.count(x) > 1), None)
        if dup:
            raise RulesFormatError(f"{where}: duplicate rule id '{dup}'")
        return cls(rules, doc.get("meta") or {})

    @classmethod
    def load(cls, path: str | Path) -> "RuleSet":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesFormatError(f"{path}: cannot read rule library ({exc.strerror})") from None
        return cls.from_json(text, str(path))

    def describe(self) -> str:
        """A short bullet list, one line per rule, for prompts and reports."""
        lines = []
        for r in self.rules:
            where = f"{r.library} {r.version}" if r.version else r.library
            lines.append(f"- `{r.before}` -> `{r.after}` ({r.kind.replace('_', ' ')}, {where})")
        return "\n".join(lines)
