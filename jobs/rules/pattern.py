"""Rule patterns: libcst expressions with placeholders, matched against code by structure and import-resolved names.

A pattern is Python expression text. In it:

- ``__0``, ``__1``, ... are placeholders: each matches any expression (the same one every time it recurs);
- a dotted name not rooted at a placeholder (``numpy.product``, ``pandas.concat``, ``float``) is a
  *qualified* name: it matches code that refers to that object through whatever import the code
  uses (``np.product`` after ``import numpy as np``, ``product`` after ``from numpy import product``);
- inside a call, ``*__args`` stands for the positional arguments not named in the pattern and
  ``**__kw`` for the keyword arguments not named in it: they are carried over unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import MetadataWrapper, QualifiedNameProvider, QualifiedNameSource

PLACEHOLDER = re.compile(r"^__\d+$")
ARGS, KW = "__args", "__kw"

# Punctuation and whitespace nodes: irrelevant to what code means, skipped when comparing.
_NOISE = (
    cst.BaseParenthesizableWhitespace, cst.TrailingWhitespace, cst.EmptyLine, cst.Newline, cst.Comment,
    cst.Comma, cst.LeftParen, cst.RightParen, cst.LeftSquareBracket, cst.RightSquareBracket,
    cst.LeftCurlyBrace, cst.RightCurlyBrace, cst.AssignEqual, cst.Dot, cst.Colon, cst.Semicolon,
)
_COMPOUND = (cst.BinaryOperation, cst.BooleanOperation, cst.Comparison, cst.UnaryOperation, cst.IfExp,
             cst.Lambda, cst.NamedExpr, cst.Await, cst.Yield)
_EMPTY = cst.Module(body=[])


def code_of(node: cst.CSTNode) -> str:
    return _EMPTY.code_for_node(node)


def dotted(node: cst.CSTNode) -> str | None:
    """``a.b.c`` for a chain of names, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def is_import_only(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.SimpleStatementLine) and all(
        isinstance(s, (cst.Import, cst.ImportFrom)) for s in node.body
    )


def children(node: cst.CSTNode) -> list[cst.CSTNode]:
    """The children that carry meaning (no whitespace, punctuation or import lines)."""
    return [c for c in node.children if not isinstance(c, _NOISE) and not is_import_only(c)]


def qualified_name(visitor, node: cst.CSTNode) -> str | None:
    """The imported or builtin object a name chain refers to (``np.product`` -> ``numpy.product``), else None.

    ``visitor`` is a metadata-dependent visitor that declared QualifiedNameProvider.
    """
    if dotted(node) is None:
        return None
    for q in visitor.get_metadata(QualifiedNameProvider, node, set()):
        if q.source == QualifiedNameSource.IMPORT:
            return q.name
        if q.source == QualifiedNameSource.BUILTIN:
            return q.name.removeprefix("builtins.")
    return None


class MetadataNames:
    """``resolve_names`` for the tree a codemod is transforming, looked up lazily through its metadata."""

    def __init__(self, visitor) -> None:
        self.visitor = visitor
        self.cache: dict[int, str | None] = {}

    def get(self, node: cst.CSTNode, default=None):
        key = id(node)
        if key not in self.cache:
            self.cache[key] = qualified_name(self.visitor, node)
        found = self.cache[key]
        return default if found is None else found

    def __contains__(self, node: cst.CSTNode) -> bool:
        return self.get(node) is not None


class _Resolver(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (QualifiedNameProvider,)

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[cst.CSTNode, str] = {}

    def _record(self, node: cst.CSTNode) -> None:
        name = qualified_name(self, node)
        if name is not None:
            self.names[node] = name

    def visit_Name(self, node: cst.Name) -> None:
        self._record(node)

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self._record(node)


def resolve_names(module: cst.Module) -> dict[cst.CSTNode, str]:
    """Map every name chain of ``module`` that refers to an imported or builtin object to its qualified name.

    Nodes are those of ``module`` itself (the metadata wrapper does not copy it).
    """
    resolver = _Resolver()
    MetadataWrapper(module, unsafe_skip_copy=True).visit(resolver)
    return resolver.names


def canon(node: cst.CSTNode, names: dict[cst.CSTNode, str]) -> str:
    """A structural key: equal for code that means the same (formatting and import aliases ignored)."""
    q = names.get(node)
    if q is not None:
        return f"Q:{q}"
    if isinstance(node, cst.SimpleString):
        try:
            return f"S:{node.evaluated_value!r}"
        except Exception:  # noqa: BLE001 - odd prefixes: fall back to the raw text
            return f"S:{node.value}"
    if isinstance(node, cst.Name):
        return f"N:{node.value}"
    if isinstance(node, (cst.Integer, cst.Float, cst.Imaginary)):
        return f"L:{node.value}"
    return f"{type(node).__name__}({','.join(canon(c, names) for c in children(node))})"


def _is_placeholder(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Name) and bool(PLACEHOLDER.match(node.value))


def chain_root(node: cst.CSTNode) -> cst.CSTNode:
    while isinstance(node, cst.Attribute):
        node = node.value
    return node


def is_qualified_chain(template: cst.CSTNode) -> bool:
    """In a pattern, a dotted name whose root is not a placeholder names an object by its qualified name."""
    return dotted(template) is not None and not _is_placeholder(chain_root(template))


@dataclass
class Bindings:
    holes: dict[str, cst.CSTNode] = field(default_factory=dict)
    holes_canon: dict[str, str] = field(default_factory=dict)
    args: list[cst.Arg] = field(default_factory=list)
    kw: list[cst.Arg] = field(default_factory=list)


@dataclass(frozen=True)
class Pattern:
    text: str
    node: cst.BaseExpression

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        return cls(text, cst.parse_expression(text))

    def match(self, code: cst.CSTNode, names: dict[cst.CSTNode, str]) -> Bindings | None:
        env = Bindings()
        return env if _match(self.node, code, names, env) else None


def _match(t: cst.CSTNode, n: cst.CSTNode, names: dict[cst.CSTNode, str], env: Bindings) -> bool:
    if _is_placeholder(t):
        key = canon(n, names)
        if t.value in env.holes:
            return env.holes_canon[t.value] == key
        env.holes[t.value], env.holes_canon[t.value] = n, key
        return True
    if is_qualified_chain(t):
        want = dotted(t)
        got = names.get(n)
        return got == want if got is not None else dotted(n) == want
    if isinstance(t, cst.Call):
        return isinstance(n, cst.Call) and _match_call(t, n, names, env)
    if isinstance(t, cst.Attribute):
        return isinstance(n, cst.Attribute) and t.attr.value == n.attr.value and _match(t.value, n.value, names, env)
    if type(t) is not type(n):
        return False
    if isinstance(t, (cst.SimpleString, cst.Name, cst.Integer, cst.Float, cst.Imaginary)):
        return canon(t, {}) == canon(n, {})
    if isinstance(t, cst.Arg) and ((t.keyword and t.keyword.value) != (n.keyword and n.keyword.value) or t.star != n.star):
        return False
    tc, nc = children(t), children(n)
    return len(tc) == len(nc) and all(_match(a, b, names, env) for a, b in zip(tc, nc))


def _is_marker(arg: cst.Arg, star: str, name: str) -> bool:
    return arg.star == star and isinstance(arg.value, cst.Name) and arg.value.value == name


def _match_call(t: cst.Call, n: cst.Call, names: dict[cst.CSTNode, str], env: Bindings) -> bool:
    if not _match(t.func, n.func, names, env):
        return False
    t_pos = [a for a in t.args if not a.keyword and not a.star]
    t_kw = {a.keyword.value: a for a in t.args if a.keyword}
    rest_args = any(_is_marker(a, "*", ARGS) for a in t.args)
    rest_kw = any(_is_marker(a, "**", KW) for a in t.args)
    n_pos = [a for a in n.args if not a.keyword and a.star != "**"]
    n_kw = [a for a in n.args if a.keyword or a.star == "**"]
    if any(a.star == "*" for a in n_pos[: len(t_pos)]):
        return False
    if len(n_pos) < len(t_pos) or (not rest_args and len(n_pos) != len(t_pos)):
        return False
    if not all(_match(ta.value, na.value, names, env) for ta, na in zip(t_pos, n_pos)):
        return False
    given = {a.keyword.value: a for a in n_kw if a.keyword}
    for key, ta in t_kw.items():
        if key not in given or not _match(ta.value, given[key].value, names, env):
            return False
    extra = [a for a in n_kw if not (a.keyword and a.keyword.value in t_kw)]
    if extra and not rest_kw:
        return False
    env.args, env.kw = n_pos[len(t_pos):], extra
    return True


def explicit_keywords(template: cst.CSTNode) -> set[str]:
    """Keyword names a pattern sets explicitly in any of its calls."""
    found: set[str] = set()

    class _Kw(cst.CSTVisitor):
        def visit_Arg(self, node: cst.Arg) -> None:
            if node.keyword:
                found.add(node.keyword.value)

    template.visit(_Kw())
    return found


class _Render(cst.CSTTransformer):
    """Fill a pattern: placeholders get the bound code, markers the carried-over arguments, names their spelling."""

    def __init__(self, env: Bindings, spell, chains: set[int], bare: set[int]) -> None:
        super().__init__()
        self.env, self.spell, self.chains, self.bare = env, spell, chains, bare

    def _hole(self, original: cst.Name) -> cst.BaseExpression:
        node = self.env.holes[original.value]
        if isinstance(node, _COMPOUND) and not node.lpar and id(original) not in self.bare:
            node = node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        return node

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
        if _is_placeholder(original_node) and original_node.value in self.env.holes:
            return self._hole(original_node)
        if id(original_node) in self.chains:
            return cst.parse_expression(self.spell(original_node.value))
        return updated_node

    def leave_Attribute(self, original_node: cst.Attribute, updated_node: cst.Attribute) -> cst.BaseExpression:
        if id(original_node) in self.chains:
            return cst.parse_expression(self.spell(dotted(original_node)))
        return updated_node

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        args: list[cst.Arg] = []
        for arg in updated_node.args:
            if _is_marker(arg, "*", ARGS):
                args += self.env.args
            elif _is_marker(arg, "**", KW):
                args += self.env.kw
            else:
                args.append(arg.with_changes(comma=cst.MaybeSentinel.DEFAULT))
        if args:  # the last argument gets no trailing comma; the others keep theirs (or get ", ")
            args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return updated_node.with_changes(args=args)


def qualified_chains(template: cst.CSTNode) -> list[cst.CSTNode]:
    """The maximal qualified-name chains of a pattern (``pandas.concat``, not its ``pandas`` part)."""
    out: list[cst.CSTNode] = []

    def walk(node: cst.CSTNode, skip: bool) -> None:
        if not skip and is_qualified_chain(node) and not _is_placeholder(node):
            out.append(node)
            return
        if isinstance(node, cst.Attribute):
            walk(node.value, False)
            return
        for child in children(node):
            skip_child = isinstance(node, cst.Arg) and child is node.keyword
            walk(child, skip_child)

    walk(template, False)
    return out


def _bare_positions(template: cst.CSTNode) -> set[int]:
    """Placeholders that sit where any expression may go without parentheses (an argument, an element)."""
    bare: set[int] = set()
    for node in _walk(template):
        if isinstance(node, (cst.Arg, cst.Element, cst.StarredElement, cst.Index, cst.DictElement)):
            value = node.value
            if _is_placeholder(value):
                bare.add(id(value))
    if _is_placeholder(template):
        bare.add(id(template))
    return bare


def _walk(node: cst.CSTNode):
    yield node
    for child in node.children:
        yield from _walk(child)


def render(template: Pattern, env: Bindings, spell) -> cst.BaseExpression:
    """The code for ``template`` with ``env`` filled in; ``spell(qualified_name)`` says how code names an object."""
    chains = {id(c) for c in qualified_chains(template.node)}
    return template.node.visit(_Render(env, spell, chains, _bare_positions(template.node)))
