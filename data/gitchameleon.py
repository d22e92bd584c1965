"""GitChameleon 2.0 (arXiv 2507.12367): problems pinned to ``library==version`` under one Python.

``dataset*.jsonl`` holds the problems; the ground-truth answers live beside it in
``solutions*.jsonl`` (``{"example_id", "answer"}``). Without that file the
reference is ``starting_code + solution`` from the problem itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.io import DataFormatError, read_jsonl, require
from data.records import Environment, TaskRecord, UpdateInfo

_FIELDS = ("example_id", "library", "version", "problem", "starting_code", "test")


# `unittest.main()` exits the interpreter (a failure here, whatever the result) and looks for
# tests in sys.modules["__main__"], which is not the program's namespace in the sandbox: load
# the TestCases from the program's globals instead, and fail unless some ran and all passed.
# One line, so the indentation of the original call still fits.
_UNITTEST_MAIN = re.compile(r"unittest\.main\([^)]*\)")
_UNITTEST_IN_PLACE = (
    "(lambda r: None if r.testsRun and r.wasSuccessful() else (_ for _ in ()).throw("
    "AssertionError(f'unittest: {len(r.failures)} failures, {len(r.errors)} errors, {r.testsRun} run')))"
    "(unittest.TextTestRunner(verbosity=0).run(unittest.defaultTestLoader.loadTestsFromModule("
    "__import__('types').SimpleNamespace(**globals()))))"
)


def runnable_test(test: str) -> str:
    return _UNITTEST_MAIN.sub(lambda _: _UNITTEST_IN_PLACE, test)


def solutions_path(dataset_path: Path) -> Path | None:
    """``dataset.dev.jsonl`` -> ``solutions.dev.jsonl``; None when the name has no ``dataset`` part."""
    if "dataset" not in dataset_path.name:
        return None
    return dataset_path.with_name(dataset_path.name.replace("dataset", "solutions", 1))


def _load_answers(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    answers = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        answers[str(require(obj, "example_id", where, (str, int)))] = require(obj, "answer", where)
    return answers


def load_gitchameleon(path: str | Path, limit: int | None = None) -> list[TaskRecord]:
    path = Path(path)
    answers = _load_answers(solutions_path(path))
    records: list[TaskRecord] = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        for key in _FIELDS:
            require(obj, key, where, (str, int) if key == "example_id" else str)
        extra = obj.get("additional_dependencies") or ""
        if not isinstance(extra, (str, list)):
            raise DataFormatError(f"{where}: field 'additional_dependencies' should be a string or list")
        extra_reqs = extra.split() if isinstance(extra, str) else [str(x) for x in extra]
        example_id = str(obj["example_id"])
        starting = obj["starting_code"]
        reference = answers.get(example_id)
        if reference is None and isinstance(obj.get("solution"), str):
            reference = starting + obj["solution"]
        records.append(
            TaskRecord(
                id=f"gitchameleon-{example_id}",
                dataset="gitchameleon",
                update=UpdateInfo(
                    library=obj["library"],
                    version=obj["version"],
                    new_api=obj.get("name_of_class_or_func"),
                    kind=obj.get("type_of_change"),
                    description=obj["problem"],
                    docs="\n".join(obj.get("docs") or []),
                ),
                prompt=f"{obj['problem']}\n\n{starting}",
                reference=reference,
                tests=(runnable_test(obj["test"]),),
                env=Environment(
                    python=str(obj.get("python_version") or "") or None,
                    requirements=(f"{obj['library']}=={obj['version']}", *extra_reqs),
                ),
                meta={"starting_code": starting, "example_id": example_id},
            )
        )
        if limit is not None and len(records) >= limit:
            break
    return records
