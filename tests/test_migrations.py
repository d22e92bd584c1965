"""Every built-in migration case, executed: the new code passes, the old code fails, with the pinned versions."""

from __future__ import annotations

import collections

import pytest

from data.migrations import load_migrations
from jobs.executor import Program
from jobs.sandbox import SandboxExecutor

RECORDS = load_migrations()


def test_set_size_and_spread():
    assert len(RECORDS) >= 40
    per_library = collections.Counter(r.update.library for r in RECORDS)
    assert len(per_library) >= 6, per_library
    for r in RECORDS:
        assert r.update.old_api and r.update.new_api and r.update.version and r.update.description
        assert r.old_code and r.reference and len(r.tests) == 1
        assert r.old_code.strip() != r.reference.strip()


@pytest.fixture(scope="module")
def verdicts():
    programs = [Program(r.code_for(code), r.tests[0]) for r in RECORDS for code in (r.reference, r.old_code)]
    with SandboxExecutor(parallelism=2) as sandbox:  # the executor the product evaluates with
        results = sandbox.run(programs, timeout_s=60)
    return {r.id: (results[2 * i], results[2 * i + 1]) for i, r in enumerate(RECORDS)}


@pytest.mark.parametrize("case", [r.id for r in RECORDS])
def test_new_code_passes_old_code_fails(case, verdicts):
    new, old = verdicts[case]
    assert new.passed, f"new code failed: {new.stderr[-1500:]}"
    assert not old.passed, "old code passed: the case does not capture an API change"
    assert old.status == "failed", f"old code should fail, not {old.status}"
