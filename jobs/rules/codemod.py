"""Apply a rule library to code with a libcst codemod: formatting and comments outside rewritten spots are kept.

Each pass walks the tree bottom-up and rewrites every expression some rule's
``before`` pattern matches (the first matching rule wins). A node whose
children changed in the same pass is left for the next pass, so nested
matches (``np.product(np.float_(x))``) are rewritten from fresh metadata.
Imports the new code needs are added, and imports the old code no longer
uses are removed (libcst's AddImportsVisitor / RemoveImportsVisitor).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import libcst as cst
from libcst.codemod import CodemodContext, VisitorBasedCodemodCommand
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor
from libcst.metadata import QualifiedNameProvider

from jobs.rules.model import Rule, RuleSet
from jobs.rules.pattern import (
    MetadataNames,
    Pattern,
    dotted,
    explicit_keywords,
    is_qualified_chain,
    render,
    resolve_names,
)

MAX_PASSES = 4


@dataclass
class CodemodResult:
    code: str
    fired: list[str] = field(default_factory=list)  # rule ids, in firing order, once per rewrite
    error: str | None = None  # the code did not parse: returned unchanged

    @property
    def changed(self) -> bool:
        return bool(self.fired)


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    before: Pattern
    after: Pattern
    after_keywords: frozenset[str]
    hints: tuple[tuple[str, str, str | None, str | None], ...]  # (bound qualified name, module, obj, asname)

    @property
    def key(self) -> str | None:
        """An identifier code must contain for the rule to match (a cheap test before parsing)."""
        node = self.before.node
        node = node.func if isinstance(node, cst.Call) else node
        name = dotted(node)
        if name is not None and not name.startswith("__"):
            return name.rsplit(".", 1)[-1]
        return node.attr.value if isinstance(node, cst.Attribute) else None

    @property
    def root(self) -> str:
        """What kind of node the rule can match: 'chain' for a qualified name, else the node type."""
        return "chain" if is_qualified_chain(self.before.node) else type(self.before.node).__name__


@lru_cache(maxsize=4096)
def _compile(rule: Rule) -> _Compiled:
    hints = []
    for line in rule.imports:
        stmt = cst.parse_statement(line).body[0]
        if isinstance(stmt, cst.Import):
            for alias in stmt.names:
                module = dotted(alias.name)
                hints.append((module, module, None, alias.asname.name.value if alias.asname else None))
        elif not isinstance(stmt.names, cst.ImportStar) and stmt.module is not None and not stmt.relative:
            module = dotted(stmt.module)
            for alias in stmt.names:
                obj = alias.name.value
                hints.append((f"{module}.{obj}", module, obj, alias.asname.name.value if alias.asname else None))
    before, after = Pattern.parse(rule.before), Pattern.parse(rule.after)
    return _Compiled(rule, before, after, frozenset(explicit_keywords(after.node)), tuple(hints))


def _bindings(module: cst.Module) -> dict[str, str]:
    """Local name -> qualified name for every import in ``module`` (``np`` -> ``numpy``)."""
    out: dict[str, str] = {}

    class _Imports(cst.CSTVisitor):
        def visit_Import(self, node: cst.Import) -> None:
            for alias in node.names:
                name = dotted(alias.name)
                if alias.asname:
                    out[alias.asname.name.value] = name
                else:
                    root = name.split(".")[0]
                    out.setdefault(root, root)

        def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
            if isinstance(node.names, cst.ImportStar) or node.module is None or node.relative:
                return
            module = dotted(node.module)
            for alias in node.names:
                local = alias.asname.name.value if alias.asname else alias.name.value
                out[local] = f"{module}.{alias.name.value}"

    module.visit(_Imports())
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class _Speller:
    """Spells a qualified name the way this code can reach it, scheduling an import when none can."""

    def __init__(self, bindings: dict[str, str], context: CodemodContext) -> None:
        self.bindings, self.context = bindings, context

    def _via(self, target: str, name: str) -> str | None:
        for local, bound in self.bindings.items():
            if bound == target:
                return local + name[len(target):]
        return None

    def spell(self, name: str, hints) -> str:
        exact = self._via(name, name)
        if exact:
            return exact
        usable = [h for h in hints if _under(name, h[0] if h[2] else h[1])]
        if usable:
            bound, module, obj, asname = max(usable, key=lambda h: len(h[0]))
            if obj is None:  # import module [as alias]
                found = self._via(module, name)
                if found:
                    return found
                prefixes = [b for b in self.bindings.values() if _under(module, b)]
                if prefixes and asname is None:
                    AddImportsVisitor.add_needed_import(self.context, module)
                    best = max(prefixes, key=len)
                    return self._via(best, name)
                AddImportsVisitor.add_needed_import(self.context, module, asname=asname)
                return (asname or module) + name[len(module):]
            found = self._via(bound, name) or self._via(module, name)
            if found:
                return found
            AddImportsVisitor.add_needed_import(self.context, module, obj, asname=asname)
            return (asname or obj) + name[len(bound):]
        prefixes = [b for b in self.bindings.values() if _under(name, b)]
        if prefixes:
            return self._via(max(prefixes, key=len), name)
        if "." in name:
            AddImportsVisitor.add_needed_import(self.context, name.rsplit(".", 1)[0])
        return name


class RuleCodemod(VisitorBasedCodemodCommand):
    DESCRIPTION = "Rewrite deprecated API uses with a mined rule library."
    METADATA_DEPENDENCIES = (QualifiedNameProvider,)

    def __init__(self, context: CodemodContext, rules: list[_Compiled]) -> None:
        super().__init__(context)
        self.by_root: dict[str, list[_Compiled]] = {}
        for c in rules:
            self.by_root.setdefault(c.root, []).append(c)
        self.fired: list[str] = []
        self.deferred = False  # a match was left for the next pass

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        # ``tree`` is the metadata wrapper's copy: names are looked up on it, not on the parsed module.
        self.names = MetadataNames(self)
        self.speller = _Speller(_bindings(tree), self.context)
        return tree.visit(self)

    def visit_Import(self, node: cst.Import) -> bool:
        return False  # import lines are fixed by the import visitors, never rewritten in place

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def _rewrite(self, original: cst.CSTNode, updated: cst.CSTNode) -> cst.CSTNode:
        candidates = list(self.by_root.get(type(original).__name__, ()))
        if original in self.names:
            candidates += self.by_root.get("chain", ())
        if not candidates:
            return updated
        if updated is not original and not updated.deep_equals(original):
            # A child was rewritten this pass: match again next pass, on fresh metadata.
            self.deferred = self.deferred or any(c.before.match(original, self.names) for c in candidates)
            return updated
        for c in candidates:
            env = c.before.match(original, self.names)
            if env is None:
                continue
            if any(a.keyword and a.keyword.value in c.after_keywords for a in env.kw):
                continue  # the code already sets a keyword the rule would add: the rule does not apply
            new = render(c.after, env, lambda name, c=c: self.speller.spell(name, c.hints))
            new = new.with_changes(lpar=original.lpar, rpar=original.rpar) if hasattr(original, "lpar") else new
            RemoveImportsVisitor.remove_unused_import_by_node(self.context, original)
            self.fired.append(c.rule.id)
            return new
        return updated

    def leave_Call(self, original_node, updated_node):
        return self._rewrite(original_node, updated_node)

    def leave_Attribute(self, original_node, updated_node):
        return self._rewrite(original_node, updated_node)

    def leave_Name(self, original_node, updated_node):
        return self._rewrite(original_node, updated_node)

    def leave_Subscript(self, original_node, updated_node):
        return self._rewrite(original_node, updated_node)


def _drop_shadowed_imports(module: cst.Module) -> cst.Module:
    """Remove module-level import names that a later import rebinds (``from scipy.misc import comb`` once
    ``from scipy.special import comb`` was added): the old one may no longer import at all."""
    lines = [s for s in module.body if isinstance(s, cst.SimpleStatementLine)
             and len(s.body) == 1 and isinstance(s.body[0], (cst.Import, cst.ImportFrom))]
    last: dict[str, int] = {}
    for i, line in enumerate(lines):
        imp = line.body[0]
        if isinstance(imp, cst.ImportFrom) and isinstance(imp.names, cst.ImportStar):
            continue
        for alias in imp.names:
            local = alias.asname.name.value if alias.asname else dotted(alias.name).split(".")[0]
            if isinstance(imp, cst.Import) and not alias.asname:
                continue  # ``import a.b`` and ``import a`` both bind ``a`` harmlessly
            last[local] = i
    body = []
    for stmt in module.body:
        if stmt in lines and isinstance(stmt.body[0], cst.ImportFrom) and not isinstance(stmt.body[0].names, cst.ImportStar):
            i = lines.index(stmt)
            imp = stmt.body[0]
            keep = [a for a in imp.names if last.get((a.asname.name.value if a.asname else a.name.value), i) <= i]
            if not keep:
                continue
            if len(keep) != len(imp.names):
                keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
                stmt = stmt.with_changes(body=[imp.with_changes(names=keep)])
        body.append(stmt)
    return module.with_changes(body=body)


def _rules(ruleset: RuleSet | list[Rule]) -> list[_Compiled]:
    return [_compile(r) for r in ruleset]


def _candidates(code: str, compiled: list[_Compiled]) -> list[_Compiled]:
    # Cheap pre-filter: a rule about ``trapz`` cannot match code that never says ``trapz``. (Code that
    # imports the API under another name, ``from numpy import trapz as t``, is missed: documented.)
    words = set(re.findall(r"[A-Za-z_]\w*", code))
    return [c for c in compiled if c.key is None or c.key in words]


def apply_rules(code: str, ruleset: RuleSet | list[Rule]) -> CodemodResult:
    """Rewrite ``code`` with every rule that matches; code that does not parse comes back unchanged."""
    all_rules = _rules(ruleset)
    fired: list[str] = []
    try:
        cst.parse_module(code)
    except cst.ParserSyntaxError as exc:
        return CodemodResult(code, fired, error=f"syntax error: {str(exc).splitlines()[0]}")
    for _ in range(MAX_PASSES):
        compiled = _candidates(code, all_rules)
        if not compiled:
            break
        try:
            module = cst.parse_module(code)
        except cst.ParserSyntaxError as exc:
            return CodemodResult(code, fired, error=f"syntax error: {str(exc).splitlines()[0]}")
        codemod = RuleCodemod(CodemodContext(), compiled)
        new_module = codemod.transform_module(module)
        if not codemod.fired:
            break
        fired += codemod.fired
        code = _drop_shadowed_imports(new_module).code
        if not codemod.deferred:
            break
    return CodemodResult(code, fired)


def rules_matching(code: str, ruleset: RuleSet) -> RuleSet:
    """The rules of ``ruleset`` whose ``before`` pattern occurs in ``code``, in library order (none if it does not parse)."""
    try:
        module = cst.parse_module(code)
    except cst.ParserSyntaxError:
        return RuleSet([], ruleset.meta)
    names = resolve_names(module)
    nodes = []

    class _Collect(cst.CSTVisitor):
        def visit_Import(self, node) -> bool:
            return False

        def visit_ImportFrom(self, node) -> bool:
            return False

        def on_visit(self, node: cst.CSTNode) -> bool:
            if isinstance(node, (cst.Call, cst.Attribute, cst.Name, cst.Subscript)):
                nodes.append(node)
            return super().on_visit(node)

    module.visit(_Collect())
    found = []
    for c in _rules(ruleset):
        chain = c.root == "chain"
        if any((n in names if chain else type(n).__name__ == c.root) and c.before.match(n, names) for n in nodes):
            found.append(c.rule)
    return RuleSet(found, ruleset.meta)
