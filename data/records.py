"""The one record type every benchmark loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UpdateInfo:
    """What changed in a library's API."""

    library: str  # import name, e.g. "pandas" ("python" for the standard library)
    old_api: str | None = None  # dotted path of the API that changed, e.g. "pandas.DataFrame.append"
    new_api: str | None = None  # dotted path of its replacement, e.g. "pandas.concat"
    version: str | None = None  # library version where the change happened
    kind: str | None = None  # e.g. "removed", "modify-function-name"
    description: str = ""  # one-paragraph summary of the change
    docs: str = ""  # longer documentation of the new behaviour (docstring, signature)


@dataclass(frozen=True)
class Environment:
    """What a program needs to run: empty means the current interpreter and its packages."""

    python: str | None = None  # e.g. "3.9"
    requirements: tuple[str, ...] = ()  # pip requirement strings, e.g. ("torch==1.9.0",)


@dataclass(frozen=True)
class TaskRecord:
    """One benchmark problem.

    A candidate solution is executed once per test, as the program
    ``setup + update_code + candidate`` (see :meth:`code_for`) followed by the test. ``setup``
    holds imports every program needs; ``update_code`` installs a simulated API
    update (CodeUpdateArena) and can be left out to evaluate without it.
    """

    id: str
    dataset: str  # the dataset kind that produced it
    update: UpdateInfo
    prompt: str  # the task as a model would see it
    reference: str | None  # known-good code for the current API
    old_code: str | None = None  # the same code written for the old API, where the dataset has it
    tests: tuple[str, ...] = ()  # each is one program's test part
    setup: str = ""
    update_code: str = ""
    env: Environment = field(default_factory=Environment)
    meta: dict[str, Any] = field(default_factory=dict)

    def code_for(self, candidate: str, *, with_update: bool = True) -> str:
        """The program part that runs before a test: setup, the update (optionally), the candidate."""
        parts = [self.setup, self.update_code if with_update else "", candidate]
        return "\n".join(p.rstrip("\n") for p in parts if p) + "\n"
