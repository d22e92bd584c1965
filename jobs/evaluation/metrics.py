"""Code-similarity metrics shared by evaluation and (later) GRPO rewards."""

from __future__ import annotations

import ast
import io
import tokenize
import warnings

from rapidfuzz.distance import Levenshtein


def parse(code: str) -> ast.Module:
    """``ast.parse`` without the warnings generated code often triggers (invalid escapes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(code)


def syntax_ok(code: str) -> bool:
    try:
        parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def strip_comments(code: str) -> str:
    """Drop comments and blank lines (what ReCode's edit similarity compares)."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type != tokenize.COMMENT]
        code = tokenize.untokenize(tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return "\n".join(line.rstrip() for line in code.splitlines() if line.strip())


def exact_match(candidate: str, reference: str) -> bool:
    """Same program up to formatting and comments (AST equality), else same stripped text."""
    try:
        return ast.dump(parse(candidate)) == ast.dump(parse(reference))
    except (SyntaxError, ValueError):
        return strip_comments(candidate) == strip_comments(reference)


def edit_similarity(candidate: str, reference: str) -> float:
    """1 - Levenshtein distance / max length, on comment-free code (1.0 = identical)."""
    return Levenshtein.normalized_similarity(strip_comments(candidate), strip_comments(reference))


def has_code(code: str | None) -> bool:
    """Whether an answer holds any code at all: blank or comment-only text is no answer."""
    return code is not None and bool(strip_comments(code).strip())


def _names(code: str) -> tuple[set[str], set[str]]:
    """``(names read, names bound)`` anywhere in ``code``; both empty if it does not parse."""
    try:
        tree = parse(code)
    except (SyntaxError, ValueError):
        return set(), set()
    read, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
    return read, bound


def names_tests_need(tests: tuple[str, ...] | list[str], prefix: str) -> set[str]:
    """Names the tests read but neither they, ``prefix`` (setup, update) nor builtins define: the candidate's job."""
    import builtins

    if any("import *" in code for code in (prefix, *tests)):
        return set()  # a star import binds names no static reading can list: do not guess
    need: set[str] = set()
    for test in tests:
        read, bound = _names(test)
        need |= read - bound
    return need - _names(prefix)[1] - set(dir(builtins))


def defines(code: str, names: set[str]) -> bool:
    """Whether ``code`` binds every one of ``names`` (statically, anywhere in it)."""
    return names <= _names(code)[1]
