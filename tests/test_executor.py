"""The simple executor's verdicts: a pass needs the test part to finish, not just exit code 0."""

from jobs.sandbox.executor import Program, SubprocessExecutor


def test_verdicts():
    ex = SubprocessExecutor(parallelism=2)
    programs = [
        Program("x = 1", "assert x == 1"),
        Program("x = 1", "assert x == 2"),
        Program("import sys\nsys.exit(0)", "pass"),
        Program("x = 1", "import os\nos._exit(0)"),
        Program("while True:\n    pass", ""),
        Program("raise ValueError('boom')", "pass"),
        Program("print('hi')", "import sys\nsys.exit(0)"),
    ]
    results = ex.run(programs, timeout_s=3)
    assert [r.status for r in results] == ["passed", "failed", "failed", "failed", "timeout", "failed", "failed"]
    assert [r.code_ok for r in results] == [True, True, False, True, False, False, True]
    assert "boom" in results[5].stderr and results[6].stdout.strip() == "hi"


def test_program_runs_in_private_directory():
    [r] = SubprocessExecutor().run([Program("import os\nopen('f.txt', 'w').write('x')", "assert os.listdir('.') == ['f.txt']")], 5)
    assert r.passed
