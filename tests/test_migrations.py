"""Every built-in migration case and variant, executed: the new code passes, the old code fails, with the pinned versions."""

from __future__ import annotations

import collections

import pytest

from data.migrations import load_migrations
from jobs.sandbox.executor import Program
from jobs.sandbox.slots import SandboxExecutor

RECORDS = load_migrations()  # every variant of every case


def test_set_size_and_spread():
    assert len([r for r in RECORDS if r.meta["variant"] == 0]) >= 40
    per_library = collections.Counter(r.update.library for r in RECORDS)
    assert len(per_library) >= 6, per_library
    for r in RECORDS:
        assert r.update.old_api and r.update.new_api and r.update.version and r.update.description
        assert r.old_code and r.reference and len(r.tests) == 1
        assert r.old_code.strip() != r.reference.strip()


def test_splits_partition_the_set_by_variant():
    train, test = load_migrations(split="train"), load_migrations(split="test")
    assert [r.id for r in train] == [r.id for r in RECORDS if r.meta["variant"] == 0]
    assert {r.id for r in train} | {r.id for r in test} == {r.id for r in RECORDS}
    assert not {r.id for r in train} & {r.id for r in test}
    assert all("#" not in r.id and r.meta == {"case": r.id, "variant": 0} for r in train)
    assert all(r.id == f"{r.meta['case']}#{r.meta['variant'] + 1}" for r in test)
    # every case has at least one held-out variant, and it is a different program
    cases = {r.meta["case"]: r for r in train}
    assert {r.meta["case"] for r in test} == set(cases)
    for r in test:
        base = cases[r.meta["case"]]
        assert r.old_code != base.old_code and r.tests[0] != base.tests[0]
        assert r.update == base.update


def test_bad_split_and_bad_variant_are_one_line_errors(tmp_path):
    from data.io import DataFormatError

    with pytest.raises(DataFormatError, match="unknown split 'dev'"):
        load_migrations(split="dev")
    bad = tmp_path / "x.yaml"
    bad.write_text(
        "library: x\ncases:\n  - {id: a, old_api: a.b, new_api: a.c, since: '1', change: removed, note: n,\n"
        "     old_code: c, new_code: d, test: t, variants: [{old_code: c2, test: t2}]}\n"
    )
    with pytest.raises(DataFormatError, match=r"cases\[0\]\.variants\[0\]: missing field 'new_code'"):
        load_migrations(bad)


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
