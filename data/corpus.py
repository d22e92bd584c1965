"""Text corpora the project builds from what it ships or what every Python has (deterministic, no download).

- :func:`code_texts`: the built-in migrations' train variants and HumanEval's prompts and solutions.
  Only the random ``tiny`` model's tokenizer is trained on it (plumbing, never a measurement).
- :func:`general_functions`: documented functions of the Python standard library, as
  ``(signature + docstring, whole function)`` pairs. General code that no benchmark scores, so what a
  method learns from it cannot leak into a result: knowledge editing takes its key statistics from
  it (``jobs.editing.covariance``) and unlearning its retain set. HumanEval, whose problems measure
  forgetting, must never be in these.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache

# Pure-Python stdlib modules of ordinary application code (parsing, text, numbers, containers, dates).
STDLIB_MODULES = (
    "argparse", "base64", "bisect", "calendar", "colorsys", "configparser", "copy", "csv", "dataclasses",
    "difflib", "fnmatch", "fractions", "ftplib", "getopt", "gettext", "glob", "graphlib", "gzip", "heapq",
    "html.parser", "imaplib", "ipaddress", "json.decoder", "json.encoder", "locale", "mailbox", "mimetypes",
    "netrc", "ntpath", "numbers", "optparse", "pathlib", "plistlib", "posixpath", "pprint", "queue", "quopri",
    "random", "sched", "shlex", "shutil", "smtplib", "statistics", "string", "tarfile", "textwrap", "tokenize",
    "urllib.parse", "uuid", "wave", "zipfile",
)


def code_texts() -> list[str]:
    from data.humaneval import load_humaneval
    from data.migrations import load_migrations

    texts: list[str] = []
    for rec in load_migrations(split="train"):
        texts += [rec.prompt, rec.old_code or "", rec.reference or "", *rec.tests]
    for rec in load_humaneval():
        texts += [rec.prompt, rec.reference or ""]
    return [t for t in texts if t]


@cache
def general_functions(max_lines: int = 40) -> tuple[tuple[str, str], ...]:
    """``(head, function)`` for every documented function or method of :data:`STDLIB_MODULES` of at most
    ``max_lines`` lines, in module order: ``head`` is its signature and docstring, ``function`` its whole
    source, both dedented. The same list on every run of one Python version."""
    import textwrap

    out: list[tuple[str, str]] = []
    for name in STDLIB_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as fh:
            source = fh.read()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not ast.get_docstring(node):
                continue
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            if node.end_lineno - start > max_lines or len(node.body) < 2:
                continue  # too long for one sample, or nothing but a docstring
            doc_end = node.body[0].end_lineno
            head = textwrap.dedent("\n".join(lines[start:doc_end]))
            out.append((head, textwrap.dedent("\n".join(lines[start:node.end_lineno]))))
    return tuple(out)


def general_texts() -> list[str]:
    """The whole functions of :func:`general_functions`: one text each."""
    return [function for _, function in general_functions()]
