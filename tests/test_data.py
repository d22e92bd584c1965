"""Benchmark loaders: one record type for every format; malformed records name file and line."""

from __future__ import annotations

import json

import pytest

from data.codeupdatearena import enforce_statement, load_codeupdatearena, split_unit_tests
from data.gitchameleon import load_gitchameleon
from data.humaneval import load_humaneval
from data.io import DataFormatError
from data.recode import load_recode
from data.records import TaskRecord


def test_codeupdatearena_loads_every_example(shared_data):
    path = shared_data / "codeupdatearena" / "arena.dev.jsonl"
    records = load_codeupdatearena(path)
    n_examples = sum(len(json.loads(line)["prog_syn_examples"]) for line in path.open())
    assert len(records) == n_examples
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert isinstance(r, TaskRecord) and r.reference and r.tests and r.update_code
        assert all("def test" in t for t in r.tests)


def test_codeupdatearena_limit(shared_data):
    assert len(load_codeupdatearena(shared_data / "codeupdatearena" / "arena.dev.jsonl", limit=7)) == 7


def test_enforce_statement_by_update_type():
    assert enforce_statement("math.sin", "modify-output-semantics", "def sin(x):\n    pass\n") == (
        "setattr(math, 'sin', sin)",
        "math.sin",
    )
    stmt, new_api = enforce_statement("math.sin", "modify-function-name", "def sine(x):\n    pass\n")
    assert stmt == "del math.sin\nsetattr(math, 'sine', sine)" and new_api == "math.sine"
    stmt, new_api = enforce_statement("re.sub", "add-function", "def sub_multi(p, r, s):\n    pass\n")
    assert stmt == "setattr(re, 'sub_multi', sub_multi)" and new_api == "re.sub_multi"
    assert enforce_statement("torch.Tensor.view", "add-argument", "def view(self, *a):\n    pass\n")[0] == (
        "setattr(torch.Tensor, 'view', view)"
    )


def test_split_unit_tests_keeps_shared_code_and_calls_each_test():
    src = "import math\n\ndef helper():\n    return 1\n\ndef test_a():\n    assert helper() == 1\n\ndef test_b():\n    assert False\n"
    parts = split_unit_tests(src)
    assert len(parts) == 2
    assert parts[0].endswith("test_a()") and "def test_b" not in parts[0] and "def helper" in parts[0]
    assert parts[1].endswith("test_b()") and "import math" in parts[1]


def test_gitchameleon_with_solutions(shared_data):
    records = load_gitchameleon(shared_data / "gitchameleon" / "dataset.dev.jsonl")
    assert len(records) == sum(1 for _ in (shared_data / "gitchameleon" / "dataset.dev.jsonl").open())
    r = records[0]
    assert r.env.python and r.env.requirements[0] == f"{r.update.library}=={r.update.version}"
    assert r.reference and r.tests


def test_humaneval_bundled():
    records = load_humaneval()
    assert len(records) == 164
    assert records[0].tests[0].rstrip().endswith(f"check({records[0].meta['entry_point']})")


def test_recode_format(tmp_path):
    path = tmp_path / "recode.jsonl"
    row = {
        "dependency": "pandas", "new_version": "2.0", "description": "append removed",
        "update_info": "use pd.concat", "old_code": "df.append(x)", "new_code": "pd.concat([df, x])",
    }
    path.write_text(json.dumps(row) + "\n\n" + json.dumps(row) + "\n")
    records = load_recode(path)
    assert [r.old_code for r in records] == ["df.append(x)"] * 2
    assert records[0].reference == "pd.concat([df, x])" and records[0].update.library == "pandas"


@pytest.mark.parametrize(
    "loader,lines,needle",
    [
        (load_recode, ['{"dependency": "pandas"}'], ":1: missing field 'new_version'"),
        (load_recode, ["{}", "not json"], ":1: missing field"),
        (load_recode, ["[1, 2]"], ":1: expected a JSON object"),
        (load_codeupdatearena, ['{"update": {}, "prog_syn_examples": []}'], ":1: update: missing field"),
        (load_codeupdatearena, ['{"prog_syn_examples": []}'], ":1: missing field 'update'"),
        (load_gitchameleon, ['{"example_id": 1, "library": 3}'], ":1: field 'library' should be str"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path, loader, lines, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        loader(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_malformed_json_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"dependency": "a", "new_version": "1", "description": "", "update_info": "",
                       "old_code": "", "new_code": ""})
    path.write_text(good + "\n" + good + "\n{oops\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: invalid JSON"):
        load_recode(path)


def test_codeupdatearena_random_update_control(shared_data):
    path = shared_data / "codeupdatearena" / "arena.dev.jsonl"
    own = load_codeupdatearena(path, limit=30)
    control = load_codeupdatearena(path, limit=30, control="random_update")
    again = load_codeupdatearena(path, limit=30, control="random_update")
    for a, b, c in zip(own, control, again):
        assert b.update.old_api != a.update.old_api  # told about another function's update...
        assert b.update_code == a.update_code and b.tests == a.tests  # ...but executed with its own
        assert b.meta["true_update"] == a.update.old_api and b.update == c.update  # deterministic
    with pytest.raises(ValueError, match="unknown control"):
        load_codeupdatearena(path, limit=3, control="nope")


def test_unit_tests_without_test_functions_are_rejected(tmp_path):
    row = {"update": {"implementation": "def f():\n    pass\n", "function_path": "math.f", "update_type": "add-function",
                      "update_id": "u"},
           "prog_syn_examples": [{"unit_tests": "def check():\n    assert False\n", "ref_solution": "x = 1",
                                  "prog_syn_id": "p", "problem": "q"}]}
    path = tmp_path / "cua.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataFormatError, match="defines no test function"):
        load_codeupdatearena(path)


def test_async_unit_tests_are_awaited():
    [snippet] = split_unit_tests("async def test_a():\n    assert False\n")
    assert "asyncio.run(test_a())" in snippet


def test_gitchameleon_unittest_main_runs_in_place():
    from data.gitchameleon import runnable_test

    src = "import unittest\nclass T(unittest.TestCase):\n    def test_x(self):\n        self.assertEqual(1, {})\n" \
          "if __name__ == '__main__':\n    unittest.main()\n"
    for value, should_pass in (("1", True), ("2", False)):
        scope = {"__name__": "__main__"}
        if should_pass:
            exec(runnable_test(src.format(value)), scope)
        else:
            with pytest.raises(AssertionError, match="1 failures"):
                exec(runnable_test(src.format(value)), scope)
