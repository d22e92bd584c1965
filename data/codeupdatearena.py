"""CodeUpdateArena (arXiv 2407.06249): synthetic API updates with program-synthesis tasks.

File format: one JSON object per line, ``{"update": {...}, "prog_syn_examples": [...]}``.
Each example becomes one :class:`TaskRecord`; each of its unit tests is one
program (``imports; update implementation; enforce statement; solution; test``).
"""

from __future__ import annotations

import ast
import re
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

from data.io import DataFormatError, read_jsonl, require
from data.records import TaskRecord, UpdateInfo

_UPDATE_FIELDS = ("implementation", "function_path", "update_type", "update_id")
_EXAMPLE_FIELDS = ("unit_tests", "ref_solution", "prog_syn_id", "problem")


def _defined_functions(code: str) -> list[str]:
    try:
        return [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    except SyntaxError:
        return re.findall(r"^def (\w+)\s*\(", code, re.M)


def enforce_statement(function_path: str, update_type: str, implementation: str) -> tuple[str, str]:
    """Return ``(statement that installs the update, dotted path of the new API)``.

    ``math.sin`` + ``modify-function-name`` with ``def sine`` gives
    ``del math.sin; setattr(math, 'sine', sine)``; ``add-function`` only adds the
    new name; every other update type replaces the attribute in place.
    """
    owner, _, attr = function_path.rpartition(".")
    if not owner:
        raise ValueError(f"function_path '{function_path}' has no module part")
    names = _defined_functions(implementation)
    if not names:
        raise ValueError("implementation defines no function")
    if update_type in ("modify-function-name", "add-function"):
        new = names[-1]
        prefix = f"del {owner}.{attr}\n" if update_type == "modify-function-name" else ""
        return f"{prefix}setattr({owner}, {new!r}, {new})", f"{owner}.{new}"
    impl = attr if attr in names else names[-1]
    return f"setattr({owner}, {attr!r}, {impl})", function_path


def split_unit_tests(source: str) -> list[str]:
    """Split a block of ``def test_...`` functions into one runnable snippet per test.

    Top-level code that is not a test (imports, helpers) is kept in every
    snippet; each snippet ends by calling its test.
    """
    try:
        with warnings.catch_warnings():  # benchmark code has e.g. invalid escape sequences
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(source)
    except SyntaxError:
        names = re.findall(r"^def (test_\w+)\s*\(", source, re.M)
        return [source.rstrip() + "\n" + "\n".join(f"{n}()" for n in names)] if names else []
    lines = source.splitlines()

    def segment(node: ast.stmt) -> str:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "\n".join(lines[start - 1 : node.end_lineno])

    tests, shared = [], []
    for node in tree.body:
        is_test = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
        (tests if is_test else shared).append(node)
    common = "\n".join(segment(n) for n in shared)

    def call(t: ast.stmt) -> str:
        return f"import asyncio\nasyncio.run({t.name}())" if isinstance(t, ast.AsyncFunctionDef) else f"{t.name}()"

    return ["\n".join(p for p in (common, segment(t), call(t)) if p) for t in tests]


def load_codeupdatearena(path: str | Path, limit: int | None = None, control: str | None = None) -> list[TaskRecord]:
    """One record per program-synthesis example.

    ``control="random_update"`` builds the benchmark's specificity condition (SPass):
    each record's ``update`` (what a method is told) is an unrelated update of another
    function, chosen deterministically, while execution still installs the real one.
    """
    if control not in (None, "random_update"):
        raise ValueError(f"unknown control '{control}' (known: random_update)")
    path = Path(path)
    records: list[TaskRecord] = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        update = require(obj, "update", where, dict)
        examples = require(obj, "prog_syn_examples", where, list)
        for key in _UPDATE_FIELDS:
            require(update, key, f"{where}: update")
        try:
            enforce, new_api = enforce_statement(
                update["function_path"], update["update_type"], update["implementation"]
            )
        except ValueError as exc:
            raise DataFormatError(f"{where}: update: {exc}") from None
        info = UpdateInfo(
            library=update.get("package") or update["function_path"].split(".")[0],
            old_api=update["function_path"],
            new_api=new_api,
            kind=update["update_type"],
            description=update.get("description", ""),
            docs="\n\n".join(x for x in (update.get("signature", ""), update.get("docstring", "")) if x),
        )
        update_code = update["implementation"].rstrip("\n") + "\n" + enforce + "\n"
        for i, ex in enumerate(examples):
            ex_where = f"{where}: prog_syn_examples[{i}]"
            if not isinstance(ex, dict):
                raise DataFormatError(f"{ex_where}: expected an object")
            for key in _EXAMPLE_FIELDS:
                require(ex, key, ex_where)
            tests = split_unit_tests(ex["unit_tests"])
            if not tests:  # a record that runs no test would pass whatever the solution does
                raise DataFormatError(f"{ex_where}: unit_tests defines no test function")
            prompt = "\n\n".join(
                x for x in (ex.get("scenario", ""), ex["problem"], ex.get("solution_signature", "")) if x
            )
            records.append(
                TaskRecord(
                    id=ex["prog_syn_id"],
                    dataset="codeupdatearena",
                    update=info,
                    prompt=prompt,
                    reference=ex["ref_solution"],
                    tests=tuple(tests),
                    setup=ex.get("prog_syn_imports") or update.get("imports", ""),
                    update_code=update_code,
                    meta={"update_id": update["update_id"], "signature": ex.get("solution_signature", "")},
                )
            )
            if limit is not None and len(records) >= limit:
                return _with_control(records, control)
    return _with_control(records, control)


def _with_control(records: list[TaskRecord], control: str | None) -> list[TaskRecord]:
    if control is None:
        return records
    updates = sorted({r.update.old_api: r.update for r in records}.items())
    out = []
    for r in records:
        others = [u for api, u in updates if api != r.update.old_api]
        if not others:
            raise ValueError("random_update control needs updates of at least two functions")
        shown = others[zlib.crc32(r.id.encode()) % len(others)]  # stable across runs and machines
        out.append(replace(r, update=shown, meta={**r.meta, "control": control, "true_update": r.update.old_api}))
    return out
