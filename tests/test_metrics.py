from jobs.evaluation.metrics import edit_similarity, exact_match, strip_comments, syntax_ok


def test_syntax_ok():
    assert syntax_ok("x = 1\n") and not syntax_ok("def f(:\n")


def test_exact_match_ignores_formatting_and_comments():
    assert exact_match("x=[1,2]  # c\n", "x = [1, 2]\n")
    assert not exact_match("x = [1, 2]\n", "x = [2, 1]\n")


def test_edit_similarity_bounds():
    assert edit_similarity("a = 1", "a = 1  # same") == 1.0
    assert edit_similarity("abcd", "wxyz") == 0.0
    assert 0.0 < edit_similarity("df.append(x)", "pd.concat([df, x])") < 1.0


def test_strip_comments_drops_blank_lines():
    assert strip_comments("# head\n\nx = 1  # tail\n\n") == "x = 1"


def test_names_the_tests_need_from_the_candidate():
    from jobs.evaluation.metrics import defines, has_code, names_tests_need

    tests = ["out = add_rows(pd.DataFrame(), x)\nassert out.empty\n", "for i in range(2):\n    check(i)\n"]
    need = names_tests_need(tests, "import pandas as pd\nx = 1\ndef check(v):\n    pass\n")
    assert need == {"add_rows"}  # pd, x and check come from the setup, range from builtins, out/i from the tests
    assert defines("def add_rows(a, b):\n    return a\n", need) and not defines("y = 2\n", need)
    assert names_tests_need(tests, "from helpers import *\n") == set()  # a star import: no guess
    assert not has_code(None) and not has_code("") and not has_code("  \n# only a comment\n")
    assert has_code("x = 1\n")
