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
