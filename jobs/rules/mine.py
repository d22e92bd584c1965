"""Mine API-update rules from (old code, new code) pairs with libcst.

For each pair both modules are parsed and their names resolved through
imports, then compared structurally (formatting, comments and import lines
ignored; ``np.x`` equals ``numpy.x``). Each place where they differ is widened
to the smallest enclosing expression (a call, attribute, name or subscript)
that mentions the changed API, and that (old, new) expression pair becomes a
rule:

- both sides are names of imported objects: ``rename`` or ``module_move``;
- only an attribute name changed on the same receiver: ``method_rename``;
- otherwise a pattern pair: sub-expressions of the old expression that reappear
  in the new one become placeholders, arguments passed unchanged become
  ``*__args`` / ``**__kw``, and the kind says what changed (``arg_rename``,
  ``arg_add``, ``arg_remove``, ``value_change`` or ``call_rewrite``).

Changes that are not inside one expression (a statement split in two, a
decorator turned into ``async def``) give no rule; they are counted in the
rule set's meta as ``unsupported``.
"""

from __future__ import annotations

import builtins
import hashlib
import re
from typing import Iterable

import libcst as cst

from data.records import TaskRecord, UpdateInfo
from jobs.rules.model import Rule, RuleSet
from jobs.rules.pattern import ARGS, KW, Pattern, canon, children, code_of, dotted, explicit_keywords, resolve_names

_ANCHORS = (cst.Call, cst.Attribute, cst.Name, cst.Subscript)
_STOP = (cst.BaseStatement, cst.BaseSmallStatement, cst.BaseSuite, cst.Module, cst.Decorator, cst.AssignTarget,
         cst.Param, cst.Parameters)
_BUILTINS = set(dir(builtins))


def api_hints(update: UpdateInfo | None) -> set[str] | None:
    """Identifiers that name the changed API (``pandas.read_csv(delim_whitespace)`` -> read_csv, delim_whitespace)."""
    if update is None or not update.old_api:
        return None
    head, _, args = update.old_api.partition("(")
    hints = {head.strip().split(".")[-1]}
    hints |= {w for w in re.findall(r"[A-Za-z_]\w*", args) if w not in _BUILTINS}
    return {h for h in hints if h}


def _walk(node: cst.CSTNode):
    yield node
    for child in node.children:
        yield from _walk(child)


def _tokens(node: cst.CSTNode, names) -> set[str]:
    out: set[str] = set()
    for n in _walk(node):
        if isinstance(n, cst.Name):
            out.add(n.value)
        q = names.get(n)
        if q:
            out.update(q.split("."))
        if isinstance(n, cst.SimpleString):
            out.update(re.findall(r"\w+", n.value))
    return out


def _diff(a, b, na, nb, pa, pb, out) -> None:
    if canon(a, na) == canon(b, nb):
        return
    ca, cb = children(a), children(b)
    if type(a) is not type(b) or len(ca) != len(cb) or not ca or a in na or b in nb:
        if not (a in na and b in nb and type(a) is type(b) and isinstance(a, cst.Attribute)
                and canon(a.value, na) != canon(b.value, nb)):
            out.append((pa + [a], pb + [b]))
            return
    for x, y in zip(ca, cb):
        _diff(x, y, na, nb, pa + [a], pb + [b], out)


def _mentions(node, names, hints: set[str] | None) -> bool:
    if hints is not None:
        return bool(_tokens(node, names) & hints)
    return any(names.get(n) and "." in names[n] for n in _walk(node)) or any(
        isinstance(n, cst.Attribute) for n in _walk(node))


def _anchor(pa, pb, na, nb, hints):
    """Widen a differing spot to the smallest expression pair that names the changed API."""
    for i in range(len(pa) - 1, -1, -1):
        x, y = pa[i], pb[i]
        if isinstance(x, _STOP) or isinstance(y, _STOP):
            return None
        parent = pa[i - 1] if i else None
        if not isinstance(x, _ANCHORS) or not isinstance(y, cst.BaseExpression):
            continue
        if isinstance(parent, cst.Attribute) and parent.attr is x or isinstance(parent, cst.Arg) and parent.keyword is x:
            continue
        if isinstance(x, cst.Name) and x not in na:
            continue  # a local variable: not an API
        if isinstance(parent, cst.Call) and parent.func is x and not _pure_rename(x, y, na, nb):
            continue  # the call around it changed as well: the rule is about the whole call
        if _mentions(x, na, hints):
            return x, y
    return None


def _pure_rename(x, y, na, nb) -> bool:
    if x in na and y in nb:
        return True
    return (isinstance(x, cst.Attribute) and isinstance(y, cst.Attribute)
            and canon(x.value, na) == canon(y.value, nb))


def _main_call(node):
    """The call extra arguments belong to: the node itself, or the call its attribute/subscript hangs off."""
    while node is not None:
        if isinstance(node, cst.Call):
            return node
        node = node.value if isinstance(node, (cst.Attribute, cst.Subscript)) else None
    return None


def _positional(call: cst.Call):
    return [a for a in call.args if not a.keyword and not a.star]


def _keywords(call: cst.Call):
    return {a.keyword.value: a for a in call.args if a.keyword}


def _expr_nodes(node, names, skip: set[int]):
    """Sub-expressions of ``node`` in pre-order, not entering qualified names or skipped arguments."""
    for child in children(node):
        if id(child) in skip:
            continue
        if isinstance(node, cst.Attribute) and child is node.attr or isinstance(node, cst.Arg) and child is node.keyword:
            continue
        if isinstance(child, cst.BaseExpression):
            yield child
            if child in names:
                continue
        yield from _expr_nodes(child, names, skip)


class _Templatize(cst.CSTTransformer):
    def __init__(self, names, holes: dict[int, str], call: cst.Call | None, drop: set[int], markers: bool,
                 rest_args: bool) -> None:
        super().__init__()
        self.names, self.holes, self.call, self.drop = names, holes, call, drop
        self.markers, self.rest_args = markers, rest_args

    def on_leave(self, original_node, updated_node):
        if id(original_node) in self.holes:
            return cst.Name(self.holes[id(original_node)])
        q = self.names.get(original_node)
        if q is not None:
            return cst.parse_expression(q)
        if original_node is self.call:
            args = [a for o, a in zip(original_node.args, updated_node.args) if id(o) not in self.drop]
            args = [a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in args]
            if self.rest_args:
                args.insert(0, cst.Arg(star="*", value=cst.Name(ARGS)))
            if self.markers:
                args.append(cst.Arg(star="**", value=cst.Name(KW)))
            return updated_node.with_changes(args=args)
        return super().on_leave(original_node, updated_node)


def _template(x, y, na, nb):
    """(before, after) pattern text for a general rewrite of old expression ``x`` into new expression ``y``."""
    old_call = x if isinstance(x, cst.Call) else None
    new_call = _main_call(y) if old_call else None
    drop_old: set[int] = set()
    drop_new: set[int] = set()
    rest_args = False
    if old_call and new_call:
        ok, nk = _keywords(old_call), _keywords(new_call)
        for key, arg in ok.items():
            if key in nk and canon(arg.value, na) == canon(nk[key].value, nb):
                drop_old.add(id(arg))
                drop_new.add(id(nk[key]))
        po, pn = _positional(old_call), _positional(new_call)
        if [canon(a.value, na) for a in po] == [canon(a.value, nb) for a in pn]:
            rest_args = True
            drop_old |= {id(a) for a in po}
            drop_new |= {id(a) for a in pn}
    holes: dict[str, str] = {}
    old_holes: dict[int, str] = {}
    new_keys = {canon(n, nb) for n in _expr_nodes(y, nb, drop_new)}

    def pick(node):
        for n in children(node):
            if id(n) in drop_old or isinstance(node, cst.Attribute) and n is node.attr:
                continue
            if isinstance(node, cst.Arg) and n is node.keyword:
                continue
            if old_call is not None and n is old_call.func:
                pick(n)  # the receiver may be a hole, the called name is what the rule is about
                continue
            key = canon(n, na) if isinstance(n, cst.BaseExpression) else None
            if key is not None and n not in na and key in new_keys:
                holes.setdefault(key, f"__{len(holes)}")
                old_holes[id(n)] = holes[key]
                continue
            if n not in na:
                pick(n)

    pick(x)
    new_holes: dict[int, str] = {}

    def place(node):
        for n in children(node):
            if id(n) in drop_new or isinstance(node, cst.Attribute) and n is node.attr:
                continue
            key = canon(n, nb) if isinstance(n, cst.BaseExpression) else None
            if key in holes and n not in nb:
                new_holes[id(n)] = holes[key]
            else:
                place(n)

    if isinstance(y, cst.BaseExpression) and canon(y, nb) in holes:
        return None  # the new expression is just a piece of the old one: not a rewrite we can state
    place(y)
    markers = bool(old_call and new_call)
    before = x.visit(_Templatize(na, old_holes, old_call, drop_old, markers, rest_args))
    after = y.visit(_Templatize(nb, new_holes, new_call, drop_new, markers, rest_args))
    return _flat(before), _flat(after)


def _flat(node: cst.CSTNode) -> str:
    """Pattern text on one line (templates come from formatted code that may span several)."""
    text = code_of(node)
    try:
        return code_of(cst.parse_expression(" ".join(line.strip() for line in text.splitlines())))
    except cst.ParserSyntaxError:
        return text


def _call_kind(before: str, after: str) -> str:
    b, a = cst.parse_expression(before), cst.parse_expression(after)
    if not (isinstance(b, cst.Call) and isinstance(a, cst.Call)) or code_of(b.func) != code_of(a.func):
        return "call_rewrite"
    bk = {k: code_of(v.value) for k, v in _keywords(b).items()}
    ak = {k: code_of(v.value) for k, v in _keywords(a).items()}
    bp, ap = [code_of(x.value) for x in _positional(b)], [code_of(x.value) for x in _positional(a)]
    removed, added = bk.keys() - ak.keys(), ak.keys() - bk.keys()
    changed = {k for k in bk.keys() & ak.keys() if bk[k] != ak[k]}
    if bp != ap:
        return "value_change" if len(bp) == len(ap) and not (removed or added or changed) else "call_rewrite"
    if removed and added and len(removed) == len(added) and not changed:
        return "arg_rename"
    if added and not removed and not changed:
        return "arg_add"
    if removed and not added and not changed:
        return "arg_remove"
    if changed and not removed and not added:
        return "value_change"
    return "call_rewrite"


def _imports_for(after: str, new_module: cst.Module) -> tuple[str, ...]:
    """The import lines of the new code that bind the qualified names used in ``after``."""
    bound: list[tuple[str, str]] = []  # (qualified prefix it provides, import line)
    for node in _walk(new_module):
        if isinstance(node, cst.Import):
            for alias in node.names:
                mod = dotted(alias.name)
                line = f"import {mod}" + (f" as {alias.asname.name.value}" if alias.asname else "")
                bound.append((mod, line))
        elif isinstance(node, cst.ImportFrom) and not isinstance(node.names, cst.ImportStar) and node.module:
            if node.relative:
                continue
            mod = dotted(node.module)
            for alias in node.names:
                line = f"from {mod} import {alias.name.value}" + (
                    f" as {alias.asname.name.value}" if alias.asname else "")
                bound.append((f"{mod}.{alias.name.value}", line))
    lines: list[str] = []
    for node in _walk(cst.parse_expression(after)):
        name = dotted(node)
        if not name or name.startswith("__"):
            continue
        covering = [(p, line) for p, line in bound if name == p or name.startswith(p + ".")]
        if covering:
            line = max(covering, key=lambda c: len(c[0]))[1]
            if line not in lines:
                lines.append(line)
    return tuple(lines)


def _rules_from_pair(old: str, new: str, hints: set[str] | None):
    """Yield (kind, before, after, imports) for one pair; raise ParserSyntaxError if either side does not parse."""
    a, b = cst.parse_module(old), cst.parse_module(new)
    na, nb = resolve_names(a), resolve_names(b)
    sites: list = []
    _diff(a, b, na, nb, [], [], sites)
    anchors: list = []
    unsupported = 0
    found = []
    for pa, pb in sites:
        anchor = _anchor(pa, pb, na, nb, hints)
        if anchor is None:
            unsupported += 1
        elif all(anchor[0] is not a[0] for a in anchors):
            anchors.append(anchor)
    inner = {id(n) for x, _ in anchors for n in _walk(x) if n is not x}
    for x, y in anchors:
        if id(x) in inner:
            continue  # part of a bigger rewrite found in the same pair
        qx, qy = na.get(x), nb.get(y)
        if qx and qy:
            kind = "rename" if qx.rsplit(".", 1)[0] == qy.rsplit(".", 1)[0] else "module_move"
            before, after = qx, qy
        elif (isinstance(x, cst.Attribute) and isinstance(y, cst.Attribute)
              and canon(x.value, na) == canon(y.value, nb) and x.attr.value != y.attr.value):
            kind, before, after = "method_rename", f"__0.{x.attr.value}", f"__0.{y.attr.value}"
        else:
            pair = _template(x, y, na, nb)
            if pair is None:
                unsupported += 1
                continue
            before, after = pair
            kind = _call_kind(before, after)
        if before == after or _refires(before, after):
            unsupported += 1
            continue
        if True:
            found.append((kind, before, after, _imports_for(after, b)))
    return found, unsupported


def _refires(before: str, after: str) -> bool:
    """A rule whose output matches its own pattern would rewrite forever (``f(x)`` -> ``f(g(x))``)."""
    after_node = cst.parse_expression(after)
    env = Pattern.parse(before).match(after_node, {})
    # The codemod does not fire when the code already sets a keyword the rule adds (see codemod._rewrite).
    return env is not None and not any(a.keyword and a.keyword.value in explicit_keywords(after_node) for a in env.kw)


def _rule_id(kind: str, before: str, after: str) -> str:
    digest = hashlib.sha1("\n".join((before, after)).encode()).hexdigest()[:8]
    return f"{kind}-{digest}"


def pairs_from_records(records: Iterable[TaskRecord]):
    """(old, new, update, id) for every record that has both old code and a reference."""
    for rec in records:
        if rec.old_code and rec.reference:
            yield rec.old_code, rec.reference, rec.update, rec.id


def mine_rules(pairs: Iterable[tuple]) -> RuleSet:
    """Mine a rule library from ``(old_code, new_code, update_info_or_None[, source_id])`` tuples.

    Rules found in several pairs are merged (``support`` counts the pairs); when
    two rules rewrite the same pattern differently the better-supported one is kept.
    """
    merged: dict[tuple[str, str, str], dict] = {}
    stats = {"pairs": 0, "unparsable": 0, "unsupported": 0, "no_rule": 0}
    for i, pair in enumerate(pairs):
        old, new, update = pair[0], pair[1], pair[2]
        source = str(pair[3]) if len(pair) > 3 else f"pair-{i}"
        stats["pairs"] += 1
        try:
            found, unsupported = _rules_from_pair(old, new, api_hints(update))
        except cst.ParserSyntaxError:
            stats["unparsable"] += 1
            continue
        stats["unsupported"] += unsupported
        stats["no_rule"] += not found
        for kind, before, after, imports in found:
            entry = merged.setdefault((kind, before, after), {"sources": [], "imports": imports, "update": update})
            if source not in entry["sources"]:
                entry["sources"].append(source)
    best: dict[str, tuple[str, str, str]] = {}
    for key, entry in merged.items():
        held = best.get(key[1])
        if held is None or len(entry["sources"]) > len(merged[held]["sources"]):
            best[key[1]] = key
    rules = []
    for kind, before, after in best.values():
        entry = merged[(kind, before, after)]
        update = entry["update"]
        library = update.library if update else before.split(".")[0].split("(")[0]
        rules.append(Rule(
            id=_rule_id(kind, before, after), library=library, version=update.version if update else None,
            kind=kind, before=before, after=after, imports=entry["imports"], support=len(entry["sources"]),
            sources=tuple(entry["sources"]),
        ))
    rules.sort(key=lambda r: -r.support)  # stable: ties keep mining order
    return RuleSet(rules, {"mined": stats})
