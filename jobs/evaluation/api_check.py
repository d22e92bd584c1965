"""The ``api_ok`` metric: does code call an update's NEW API, and is the deprecated OLD API gone?

Grammar of an API string (as in our data files)::

    api       := path [ "(" [qualifier] ")" ]
    path      := NAME ("." NAME)*        pandas.concat, pandas.DataFrame.append, float
    qualifier := NAME                    keyword passed:       numpy.percentile(interpolation)
               | NAME "=" literal        keyword == literal:   sklearn.cluster.KMeans(algorithm='full')
               | literal                 first positional arg: matplotlib.style.use('seaborn-darkgrid')

Matching is static. libcst's QualifiedNameProvider resolves aliases, from-imports and ``import a.b``;
a name the code never binds is taken at face value (imports often live in a separate prelude).

* path: a reference or from-import whose qualified name is the path; a one-segment path must be
  a builtin. The module part is the longest importable prefix, found on ``sys.path`` without
  importing (so it follows the installed packages). Where two or more segments follow it
  (``numpy.ndarray.tobytes``, ``pandas.Series.dt.weekofyear``) the first is a class whose
  instances can't be typed statically, so ``<expr>.tobytes`` counts too (``lst.append`` counts
  as ``DataFrame.append``: a deliberate over-count), unless ``<expr>`` is the module itself
  (``pd.value_counts`` is no ``Series.value_counts``). If the package is not importable, a
  CamelCase segment followed by a lowercase/underscore member marks the class, and the path may
  be the tail of a qualified name (``stats.combine_pvalues``).
* A qualifier needs a call of the path. A positional literal only needs a call into the same
  top-level package: re-exports (``plt.style.context``) hide the callee; the value is distinctive.
* Not interpretable (None): anything outside the grammar (``async def``), a non-builtin single
  name, a bare qualifier naming an argument type (``random.sample(set)``).

:func:`check_api` leaves ``uses_old`` unknown when old == new (only behaviour changed), and
``uses_new`` unknown when the new API owns the old member (``Element.getchildren`` -> ``Element``:
using the object itself is invisible statically).

``api_ok`` (:func:`api_verdict`, :func:`record_api_verdict`) cannot flatter: whether a record has a
verdict is decided by the RECORD alone, the same for every answer, and a decidable record counts every
answer, so breaking an answer never takes it out of the denominator.

* A pair ``(new_api, old_api)`` is decidable (:func:`decidable`) iff both are given and interpretable,
  they differ (modulo whitespace), the old one is not a member of the new one (``Element`` /
  ``Element.getchildren``), and an unqualified old API is not the new one's path or a prefix of it (every
  use of the new would be a use of the old). No old API, old == new (only behaviour changed), an
  uninterpretable side: n/a. These are exactly the cases where :class:`ApiUsage` has a None side, so on a
  decidable record, for code that parses, both sides are booleans.
* On a decidable record: no code (None, blank, comment-only: ``metrics.has_code``) -> False; code that
  does not parse -> False (no use can be confirmed, which is not a success); else new used and old gone.
* Records (:func:`record_api_verdict`) add: a control condition (``meta["control"]``: the update shown is
  not the one installed) and the datasets in :data:`API_NOT_APPLICABLE` (GitChameleon: see
  :data:`API_NOTES`) are n/a; a check the record's own reference fails is n/a (it would ask for
  something the known-good answer does not do).
* CodeUpdateArena records carry ``old_api == new_api == function_path`` except for renames, so the pair
  rule alone would leave almost all n/a. The record's update says more: ``modify-function-name`` is the
  pair rule (``math.sine`` used, ``math.sin`` gone); ``add-function`` asks for a use of the new function
  (the original stays, nothing is deprecated); any other update asks for a call of ``function_path``
  passing one of the parameters the update ADDS (by keyword or in its positional slot; a ``*args`` call
  confirms no slot), those read from ``update_code`` (:func:`_added_args`) and kept only where the
  reference passes them. An update that adds no parameter (new semantics or types, same signature) is
  n/a: nothing in a call site tells the updated API from the old one. Known over-count: a defaulted
  parameter the implementation drops instead of forwarding to the original looks added (``numpy.full``'s
  ``dtype`` in one update).
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib.util
from dataclasses import dataclass
from importlib.machinery import PathFinder

import libcst as cst
from libcst.metadata import MetadataWrapper, QualifiedNameProvider, ScopeProvider

_NO = object()  # "no literal given"; a real literal may be None
_BAD = object()  # not a literal
# Bare qualifiers that describe an argument's type rather than name a keyword.
_TYPE_WORDS = frozenset(
    "bool int float complex str bytes bytearray list tuple set frozenset dict "
    "sequence mapping iterable iterator collection".split()
)


@dataclass(frozen=True)
class ApiUsage:
    uses_new: bool | None  # None: no new API given or the pattern could not be interpreted
    uses_old: bool | None  # None: no old API given, not interpretable, or old == new

    @property
    def ok(self) -> bool | None:
        """New API used and old API gone. False as soon as one side fails; None (never True) while either
        side cannot be decided, so an undecidable check never counts as a success."""
        if self.uses_new is False or self.uses_old is True:
            return False
        if self.uses_new is None or self.uses_old is None:
            return None
        return True


@dataclass(frozen=True)
class _Pattern:
    path: str  # dotted qualified name; "builtins.X" for a builtin
    module: str  # module part; a heuristic base resolving to it (or a prefix) is the module itself
    member: tuple[str, ...] = ()  # for Class.member paths: the attribute chain matched on any object
    tail: bool = False  # package not importable: path may end a longer qualified name
    keyword: str | None = None
    value: object = _NO
    positional: bool = False


def _dotted(node: cst.BaseExpression) -> list[str] | None:
    if isinstance(node, cst.Name):
        return [node.value]
    if isinstance(node, cst.Attribute):
        head = _dotted(node.value)
        return head + [node.attr.value] if head else None
    return None


def _root(node: cst.BaseExpression) -> cst.BaseExpression:
    while isinstance(node, cst.Attribute):
        node = node.value
    return node


def _literal(node: cst.CSTNode) -> object:
    try:
        return ast.literal_eval(cst.Module([]).code_for_node(node))
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return _BAD


def _same(a: object, b: object) -> bool:
    return a is not _BAD and type(a) is type(b) and a == b  # type check: True must not equal 1


@functools.lru_cache(maxsize=4096)
def _module_len(parts: tuple[str, ...]) -> int | None:
    """How many leading segments name an importable module; None if the top level isn't one."""
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level lookup imports nothing
        n = 0 if spec is None else 1
        while 0 < n < len(parts) and spec.submodule_search_locations:
            # PathFinder only looks at files, so submodules are not imported either
            spec = PathFinder.find_spec(".".join(parts[: n + 1]), list(spec.submodule_search_locations))
            if spec is None:
                break
            n += 1
    except (ImportError, ValueError):
        return None
    return n or None


@functools.lru_cache(maxsize=4096)
def _pattern(api: str) -> _Pattern | None:
    try:
        expr = cst.parse_expression(api.strip())
    except (cst.ParserSyntaxError, ValueError):
        return None
    qual: dict = {}
    if isinstance(expr, cst.Call):
        if len(expr.args) > 1 or (expr.args and expr.args[0].star):
            return None
        for arg in expr.args:
            if arg.keyword is not None:
                qual = {"keyword": arg.keyword.value, "value": _literal(arg.value)}
            elif isinstance(arg.value, cst.Name):
                if arg.value.value.lower() in _TYPE_WORDS:
                    return None  # the argument's type, which can't be checked statically
                qual = {"keyword": arg.value.value}
            else:
                qual = {"value": _literal(arg.value), "positional": True}
        if qual.get("value") is _BAD:
            return None
        expr = expr.func
    parts = _dotted(expr)
    if not parts:
        return None
    if len(parts) == 1:
        if not hasattr(builtins, parts[0]):
            return None  # a bare name says nothing about where it comes from
        return _Pattern(path="builtins." + parts[0], module="builtins", **qual)
    n = _module_len(tuple(parts))
    if n is not None:
        member = tuple(parts[n + 1 :]) if len(parts) - n >= 2 else ()
        return _Pattern(".".join(parts), ".".join(parts[:n]), member, **qual)
    for i in range(len(parts) - 1):
        seg, nxt = parts[i], parts[i + 1][0]
        if seg[:1].isupper() and any(c.islower() for c in seg) and (nxt.islower() or nxt == "_"):
            return _Pattern(".".join(parts), ".".join(parts[:i]), tuple(parts[i + 1 :]), True, **qual)
    return _Pattern(".".join(parts), ".".join(parts[:-1]), (), True, **qual)


class _Index(cst.CSTVisitor):
    """Every reference, call and import in one parsed module, with its qualified names."""

    METADATA_DEPENDENCIES = (QualifiedNameProvider, ScopeProvider)

    def __init__(self, unbound: set[cst.Name]) -> None:
        self.unbound = unbound
        self.names: dict[cst.CSTNode, set[str]] = {}
        self.calls: list[cst.Call] = []
        self.imported: set[str] = set()

    def visit_Import(self, node: cst.Import) -> bool:
        for alias in node.names:
            self.imported.add(".".join(_dotted(alias.name) or []))
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        if not node.relative and node.module is not None and not isinstance(node.names, cst.ImportStar):
            module = ".".join(_dotted(node.module) or [])
            self.imported.update(f"{module}.{a.name.value}" for a in node.names)
        return False

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, (cst.Name, cst.Attribute)):
            names = {q.name for q in self.get_metadata(QualifiedNameProvider, node, set())}
            parts = _dotted(node)
            if not names and parts and _root(node) in self.unbound:
                names = {".".join(parts)}
            self.names[node] = names
        elif isinstance(node, cst.Call):
            self.calls.append(node)
        return super().on_visit(node)


def _index(code: str) -> _Index | None:
    try:
        wrapper = MetadataWrapper(cst.parse_module(code), unsafe_skip_copy=True)  # we own the tree
        scopes = {s for s in wrapper.resolve(ScopeProvider).values() if s is not None}
    except (cst.ParserSyntaxError, RecursionError, ValueError, TypeError):
        return None
    # Names read but never bound anywhere: no import to resolve them through.
    unbound = {a.node for s in scopes for a in s.accesses if not a.referents and isinstance(a.node, cst.Name)}
    index = _Index(unbound)
    wrapper.visit(index)
    return index


def _name_is(name: str, p: _Pattern) -> bool:
    return name == p.path or (p.tail and name.endswith("." + p.path))


def _refers(ix: _Index, node: cst.CSTNode, p: _Pattern) -> bool:
    if any(_name_is(n, p) for n in ix.names.get(node, ())):
        return True
    if not p.member:
        return False
    for attr in reversed(p.member):
        if not isinstance(node, cst.Attribute) or node.attr.value != attr:
            return False
        node = node.value
    if _dotted(node) is not None:  # a plain name: is it the module, not an instance?
        for q in ix.names.get(node, ()):
            if p.module == q or p.module.startswith(q + "."):
                return False
    return True


def _call_matches(ix: _Index, call: cst.Call, p: _Pattern) -> bool:
    if p.positional:
        first = call.args[0] if call.args else None
        if first is None or first.keyword is not None or first.star:
            return False
        if not _same(_literal(first.value), p.value):
            return False
        top = p.path.split(".")[0]
        return _refers(ix, call.func, p) or any(n.split(".")[0] == top for n in ix.names.get(call.func, ()))
    if not _refers(ix, call.func, p):
        return False
    kwargs = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    if p.keyword is None or p.keyword not in kwargs:
        return p.keyword is None
    return p.value is _NO or _same(_literal(kwargs[p.keyword]), p.value)


def _uses(ix: _Index, p: _Pattern) -> bool:
    if p.keyword is None and not p.positional:
        return any(_name_is(n, p) for n in ix.imported) or any(_refers(ix, node, p) for node in ix.names)
    return any(_call_matches(ix, c, p) for c in ix.calls)


def uses_api(code: str, api: str) -> bool | None:
    """Does ``code`` use ``api``? None if the code doesn't parse or the API string isn't interpretable."""
    p = _pattern(api)
    ix = _index(code) if p is not None else None
    return None if p is None or ix is None else _uses(ix, p)


def check_api(code: str, new_api: str | None, old_api: str | None) -> ApiUsage:
    """Whether ``code`` uses ``new_api`` and whether it still uses ``old_api`` (see module docstring)."""
    ix = _index(code)
    if ix is None:
        return ApiUsage(None, None)
    new = _pattern(new_api) if new_api else None
    same = bool(new_api) and "".join((old_api or "").split()) == "".join(new_api.split())
    old = _pattern(old_api) if old_api and not same else None
    if new is not None and old is not None and old.path.startswith(new.path + "."):
        new = None  # the replacement is the object itself (Element, not Element.getchildren)
    return ApiUsage(None if new is None else _uses(ix, new), None if old is None else _uses(ix, old))


# --- api_ok: one verdict per (record, answer) --------------------------------------------------------


def _same_api(a: str, b: str) -> bool:
    return "".join(a.split()) == "".join(b.split())


@functools.lru_cache(maxsize=4096)
def decidable(new_api: str | None, old_api: str | None) -> bool:
    """Whether a record with these API strings gets an ``api_ok`` verdict (the rule in the module docstring).

    Decided from the two strings alone, never from an answer."""
    if not (new_api and new_api.strip() and old_api and old_api.strip()) or _same_api(new_api, old_api):
        return False
    new, old = _pattern(new_api), _pattern(old_api)
    if new is None or old is None:
        return False
    if old.path.startswith(new.path + "."):
        return False  # the new API owns the old member: using the object itself is invisible statically
    unqualified_old = old.keyword is None and not old.positional
    if unqualified_old and (new.path == old.path or new.path.startswith(old.path + ".")):
        return False  # every use of the new API is a use of the old one
    return True


@dataclass(frozen=True)
class _Check:
    """What a decidable record asks of an answer."""

    new: _Pattern  # must be used
    old: _Pattern | None = None  # must be gone
    args: tuple[tuple[str, int | None], ...] = ()  # if given: a call of ``new`` passes one of these
    # (name, positional index or None for keyword-only)

    def verdict(self, code: str | None) -> bool:
        from jobs.evaluation.metrics import has_code

        if not has_code(code):
            return False
        ix = _index(code)
        if ix is None:
            return False  # does not parse: no API use can be confirmed
        if self.args:
            used = any(_refers(ix, c.func, self.new) and any(_passes(c, *a) for a in self.args) for c in ix.calls)
        else:
            used = _uses(ix, self.new)
        return used and not (self.old is not None and _uses(ix, self.old))


def _passes(call: cst.Call, name: str, index: int | None) -> bool:
    """Does ``call`` pass the argument ``name`` (by keyword, or positionally at ``index``)?"""
    if any(a.keyword is not None and a.keyword.value == name for a in call.args):
        return True
    if index is None:
        return False
    positional = []
    for a in call.args:
        if a.keyword is not None or a.star == "**":
            break
        if a.star:  # *args: which slot holds what is unknown, so nothing after it is confirmed
            return False
        positional.append(a)
    return len(positional) > index


def api_verdict(code: str | None, new_api: str | None, old_api: str | None) -> bool | None:
    """``api_ok`` for one answer: None iff the API pair is undecidable (:func:`decidable`); otherwise False for no
    code (``metrics.has_code``) or code that does not parse, else new API used and old API gone."""
    if not decidable(new_api, old_api):
        return None
    return _Check(_pattern(new_api), _pattern(old_api)).verdict(code)


# Datasets where no record gets an api_ok verdict, by decision rather than by their API strings.
API_NOT_APPLICABLE = frozenset({"gitchameleon"})

# What api_ok covers, per dataset, for the report (shown next to the api_ok column or under the table).
API_NOTES: dict[str, str] = {
    "gitchameleon": (
        "api_ok n/a: a GitChameleon problem names the API it is about (name_of_class_or_func, often a bare name) "
        "with no deprecated counterpart; the target version may lie on either side of the change and every "
        "attempt calls the named API, so no static check tells a right answer from a wrong one"
    ),
    "codeupdatearena": (
        "api_ok over the records whose update renames a function (new name used, old one gone), adds one "
        "(it is called), or adds an argument the reference solution passes (a call of the function passing it); "
        "behaviour-only updates (same signature, new semantics or types) are n/a"
    ),
    "humaneval": "api_ok n/a: no API update",
    "recode": "api_ok n/a: records name no API (only a free-text description of the update)",
}


def api_note(dataset: str) -> str | None:
    """A line for the report on what ``api_ok`` covers in ``dataset`` (None: the general rule, nothing to add)."""
    return API_NOTES.get(dataset)


def _added_args(update_code: str, attr: str) -> tuple[tuple[str, int | None], ...]:
    """CodeUpdateArena: the parameters the update's function adds, read from its implementation.

    A parameter with a default that no call of the saved original (``old_<name>(...)``) receives, as a keyword
    of that name or (positional parameters) as the bare name, is new; a required one never is."""
    from jobs.evaluation.metrics import parse

    try:
        tree = parse(update_code)
    except (SyntaxError, ValueError):
        return ()
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not defs:
        return ()
    fn = next((d for d in reversed(defs) if d.name == attr), defs[-1])  # as enforce_statement installs it
    a = fn.args
    slots = [p.arg for p in a.posonlyargs + a.args]
    defaulted = set(slots[len(slots) - len(a.defaults):]) if a.defaults else set()
    defaulted |= {p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None}
    if slots and slots[0] in ("self", "cls"):
        slots = slots[1:]  # called as obj.method(...): positions count from the first real argument
    forwarded: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if not name.startswith("old_"):
            continue
        forwarded.update(k.arg for k in node.keywords if k.arg)
        # a positional parameter passed on positionally, whatever the slot (re.sub's flags after a new count)
        forwarded.update(arg.id for arg in node.args if isinstance(arg, ast.Name) and arg.id in slots)
    params = [(p, i) for i, p in enumerate(slots)] + [(p.arg, None) for p in a.kwonlyargs]
    return tuple((p, i) for p, i in params if p in defaulted and p not in forwarded)


def _codeupdatearena_check(update, update_code: str) -> _Check | None:
    new_api, old_api, kind = update.new_api, update.old_api, update.kind or ""
    if not new_api:
        return None
    if kind == "add-function":  # the original function stays: nothing deprecated, the new one must be used
        new = _pattern(new_api)
        return None if new is None else _Check(new)
    if not old_api or not _same_api(new_api, old_api):  # modify-function-name: new name in, old name out
        return _Check(_pattern(new_api), _pattern(old_api)) if decidable(new_api, old_api) else None
    new = _pattern(new_api)
    args = _added_args(update_code, new_api.rpartition(".")[2])
    return None if new is None or not args else _Check(new, None, args)


@functools.lru_cache(maxsize=8192)
def _record_check(dataset: str, update, update_code: str, reference: str | None) -> _Check | None:
    if dataset in API_NOT_APPLICABLE:
        return None
    if dataset == "codeupdatearena":
        check = _codeupdatearena_check(update, update_code)
    elif decidable(update.new_api, update.old_api):
        check = _Check(_pattern(update.new_api), _pattern(update.old_api))
    else:
        check = None
    if check is None or reference is None:
        return check
    if check.args:  # keep the new arguments the known-good answer passes: the others are not required
        args = tuple(a for a in check.args if _Check(check.new, check.old, (a,)).verdict(reference))
        return _Check(check.new, check.old, args) if args else None
    return check if check.verdict(reference) else None  # a check the reference fails measures nothing


def record_check_applies(rec) -> bool:
    """Whether ``rec`` gets an ``api_ok`` verdict at all (from the record alone: its update, update code,
    reference, dataset and control condition)."""
    if rec.meta.get("control"):
        return False  # the update shown is not the one installed
    return _record_check(rec.dataset, rec.update, rec.update_code, rec.reference) is not None


def record_api_verdict(rec, code: str | None) -> bool | None:
    """``api_ok`` of one answer to one ``TaskRecord``: None iff the record is undecidable
    (:func:`record_check_applies`, the same for every answer), else a bool (no code / no parse: False)."""
    if rec.meta.get("control"):
        return None
    check = _record_check(rec.dataset, rec.update, rec.update_code, rec.reference)
    return None if check is None else check.verdict(code)
