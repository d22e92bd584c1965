"""The api_ok metric (jobs.evaluation.api_check): static detection of new/old API use."""

from __future__ import annotations

import textwrap

import pytest

from data.records import TaskRecord, UpdateInfo
from jobs.evaluation.api_check import (
    API_NOTES,
    ApiUsage,
    api_note,
    api_verdict,
    check_api,
    decidable,
    record_api_verdict,
    record_check_applies,
    uses_api,
)


def code(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


# --- dotted paths through aliases and from-imports ---------------------------------------------


@pytest.mark.parametrize(
    "src, api",
    [
        ("import pandas as pd\npd.concat([a, b])\n", "pandas.concat"),
        ("from numpy import product as p\np(x)\n", "numpy.product"),
        ("import numpy\nnumpy.trapz(y, x)\n", "numpy.trapz"),
        ("from collections import Mapping\n", "collections.Mapping"),
        ("import collections\nisinstance(x, collections.Mapping)\n", "collections.Mapping"),
        ("import collections.abc\nisinstance(x, collections.abc.Mapping)\n", "collections.abc.Mapping"),
        ("import scipy.integrate as si\nsi.simps(y)\n", "scipy.integrate.simps"),
        ("from scipy import integrate\nf = integrate.simps\n", "scipy.integrate.simps"),
        ("import torch\ntorch.linalg.solve(a, b)\n", "torch.linalg.solve"),
        ("import xml.etree.ElementTree as ET\nET.fromstring(s)\n", "xml.etree.ElementTree.fromstring"),
        ("import pandas as pd\npd.DataFrame.append(df, other)\n", "pandas.DataFrame.append"),
        # names the code never binds are taken at face value (imports may live in a prelude)
        ("def f(x):\n    return math.sin(x)\n", "math.sin"),
    ],
)
def test_dotted_path_is_resolved(src, api):
    assert uses_api(src, api) is True


@pytest.mark.parametrize(
    "src, api",
    [
        # mentioned only in a string or a comment
        ("import pandas as pd\nx = 'pd.concat([a, b])'  # pd.concat\n", "pandas.concat"),
        # a local function of the same name, no import
        ("def concat(xs):\n    return xs\nconcat([1])\n", "pandas.concat"),
        # a different module's function of the same name
        ("import numpy as np\nnp.concatenate([a])\nimport torch\ntorch.solve(b, a)\n", "torch.linalg.solve"),
        ("import torch\ntorch.linalg.solve(a, b)\n", "torch.solve"),
        ("import collections.abc\ncollections.abc.Mapping\n", "collections.Mapping"),
        ("import numpy as np\nnp.float64\n", "numpy.float"),
        ("from scipy.special import comb\ncomb(5, 2)\n", "scipy.misc.comb"),
        ("import numpy as np\nnp.prod(x)\n", "numpy.product"),
    ],
)
def test_dotted_path_negative(src, api):
    assert uses_api(src, api) is False


def test_import_alone_counts_as_use():
    # importing a removed name already fails, so it is a use of the old API
    assert uses_api("from scipy.integrate import simps\n", "scipy.integrate.simps") is True


# --- Class.member: any object's attribute, since types are unknown ------------------------------


@pytest.mark.parametrize(
    "src, api",
    [
        ("def f(df, other):\n    return df.append(other)\n", "pandas.DataFrame.append"),
        ("def f(t):\n    return t.isAlive()\n", "threading.Thread.isAlive"),
        ("import numpy as np\nnp.asarray(a).tobytes()\n", "numpy.ndarray.tobytes"),
        ("from scipy import sparse\nsparse.identity(3).A\n", "scipy.sparse.spmatrix.A"),
        ("def f(leg):\n    return leg.legend_handles\n", "matplotlib.legend.Legend.legend_handles"),
        ("import pandas as pd\npd.Series(d).dt.weekofyear\n", "pandas.Series.dt.weekofyear"),
        ("import array\narray.array('i', v).tostring()\n", "array.array.tostring"),
        ("def f(x):\n    return x.view(2, 3)\n", "torch.Tensor.view"),
    ],
)
def test_method_heuristic(src, api):
    assert uses_api(src, api) is True


@pytest.mark.parametrize(
    "src, api",
    [
        ("def f(t):\n    return t.is_alive()\n", "threading.Thread.isAlive"),
        # a module-level function is not the Series method of the same name
        ("import pandas as pd\npd.value_counts(v)\n", "pandas.Series.value_counts"),
        ("def f(s):\n    return s.dt.isocalendar()\n", "pandas.Series.dt.weekofyear"),
        ("def f(df):\n    return df['append']\n", "pandas.DataFrame.append"),
        # module functions get no attribute heuristic: torch.linalg.solve is not torch.solve
        ("import torch\ntorch.linalg.solve(a, b)\n", "torch.solve"),
    ],
)
def test_method_heuristic_negative(src, api):
    assert uses_api(src, api) is False


# --- keyword, keyword-value and positional-literal qualifiers -----------------------------------


def test_keyword_qualifier():
    src = "from sklearn.preprocessing import OneHotEncoder\nenc = OneHotEncoder(sparse=False)\n"
    assert uses_api(src, "sklearn.preprocessing.OneHotEncoder(sparse)") is True
    assert uses_api(src, "sklearn.preprocessing.OneHotEncoder(sparse_output)") is False
    assert uses_api("import numpy as np\nnp.percentile(v, 5, interpolation='lower')\n",
                    "numpy.percentile(interpolation)") is True
    # the keyword on another callable does not count
    assert uses_api("import numpy as np\nnp.quantile(v, .5, interpolation='lower')\n",
                    "numpy.percentile(interpolation)") is False
    # nor the callable without the keyword
    assert uses_api("import pandas as pd\npd.read_csv(f, sep=r'\\s+')\n", "pandas.read_csv(delim_whitespace)") is False
    # methods combine with keywords
    assert uses_api("def f(ax):\n    ax.grid(b=True)\n", "matplotlib.axes.Axes.grid(b)") is True
    assert uses_api("def f(ax):\n    ax.grid(visible=True)\n", "matplotlib.axes.Axes.grid(b)") is False


def test_keyword_value_qualifier():
    api = "sklearn.linear_model.SGDClassifier(loss='log')"
    imp = "from sklearn.linear_model import SGDClassifier\n"
    assert uses_api(imp + 'SGDClassifier(loss="log", tol=1e-3)\n', api) is True
    assert uses_api(imp + 'SGDClassifier(loss="log_loss")\n', api) is False
    assert uses_api(imp + "SGDClassifier(loss=name)\n", api) is False  # not a literal: unknown value
    assert uses_api("import sklearn.cluster as c\nc.KMeans(algorithm='full')\n",
                    "sklearn.cluster.KMeans(algorithm='full')") is True
    # True must not match 1
    assert uses_api("import m\nm.f(x=1)\n", "m.f(x=True)") is False


def test_positional_literal_qualifier():
    api = "matplotlib.style.use('seaborn-darkgrid')"
    assert uses_api("import matplotlib.style\nmatplotlib.style.use('seaborn-darkgrid')\n", api) is True
    # reached through a re-export: the literal decides
    assert uses_api("import matplotlib.pyplot as plt\nplt.style.context('seaborn-darkgrid')\n", api) is True
    assert uses_api("import matplotlib.pyplot as plt\nplt.style.use('seaborn-v0_8-darkgrid')\n", api) is False
    assert uses_api("print('seaborn-darkgrid')\n", api) is False


# --- builtins and uninterpretable strings --------------------------------------------------------


def test_builtin_name():
    assert uses_api("import numpy as np\nnp.array(v, dtype=float)\n", "float") is True
    # np.float's attribute name is not the builtin
    assert uses_api("import numpy as np\nnp.array(v, dtype=np.float)\n", "float") is False
    assert uses_api("def f(float):\n    return float\n", "float") is False


@pytest.mark.parametrize("api", ["async def", "", "-", "concat", "random.sample(set)", "f(a, b)", "x.y(**k)"])
def test_uninterpretable_api_is_none(api):
    assert uses_api("import random\nrandom.sample(s, 2)\n", api) is None


def test_unparseable_code():
    assert uses_api("def broken(:\n", "pandas.concat") is None
    usage = check_api("def broken(:\n", "pandas.concat", "pandas.DataFrame.append")
    assert usage == ApiUsage(None, None) and usage.ok is None


# --- check_api -------------------------------------------------------------------------------


def test_check_api_new_and_old():
    new, old = "pandas.concat", "pandas.DataFrame.append"
    good = "import pandas as pd\ndef f(df, o):\n    return pd.concat([df, o])\n"
    bad = "import pandas as pd\ndef f(df, o):\n    return df.append(o)\n"
    both = "import pandas as pd\ndef f(df, o):\n    return pd.concat([df.append(o)])\n"
    neither = "def f(df, o):\n    return df\n"
    assert check_api(good, new, old) == ApiUsage(True, False) and check_api(good, new, old).ok is True
    assert check_api(bad, new, old).ok is False
    assert check_api(both, new, old).ok is False
    assert check_api(neither, new, old).ok is False


def test_same_old_and_new_only_checks_new():
    usage = check_api("import math\nmath.sin(1.0)\n", "math.sin", "math.sin")
    # Only behaviour changed: the old side is undecidable, so api_ok is unknown, never a success.
    assert usage == ApiUsage(True, None) and usage.ok is None
    assert check_api("import math\nmath.cos(1.0)\n", "math.sin", "math.sin").ok is False
    usage = check_api("import itertools\nitertools.product(a, b)\n", "itertools.product", " itertools.product")
    assert usage.uses_old is None  # same API modulo whitespace


def test_missing_or_uninterpretable_sides():
    src = "import asyncio\nasync def f():\n    await asyncio.sleep(0)\n"
    assert check_api(src, "async def", "asyncio.coroutine") == ApiUsage(None, False)
    assert check_api(src, "async def", "asyncio.coroutine").ok is None  # the new side is undecidable
    old = "import asyncio\n@asyncio.coroutine\ndef f():\n    yield\n"
    assert check_api(old, "async def", "asyncio.coroutine").ok is False
    assert check_api(src, None, None).ok is None
    assert check_api("import numpy as np\nnp.sort(a)\n", "numpy.sort", None) == ApiUsage(True, None)


def test_new_api_owning_the_old_member_is_unknown():
    src = "import xml.etree.ElementTree as ET\n[c.tag for c in list(ET.fromstring(s))]\n"
    usage = check_api(src, "xml.etree.ElementTree.Element", "xml.etree.ElementTree.Element.getchildren")
    assert usage == ApiUsage(None, False) and usage.ok is None


def test_ok_property():
    assert ApiUsage(None, None).ok is None
    assert ApiUsage(True, None).ok is None and ApiUsage(None, False).ok is None  # one side unknown: unknown
    assert ApiUsage(None, True).ok is False and ApiUsage(False, None).ok is False  # one side fails: fails
    assert ApiUsage(False, False).ok is False and ApiUsage(True, True).ok is False
    assert ApiUsage(True, False).ok is True


# --- the built-in migration set --------------------------------------------------------------


def test_migration_set():
    from data.migrations import load_migrations

    records = load_migrations()
    decided = 0
    for rec in records:
        new, old = rec.update.new_api, rec.update.old_api
        after, before = check_api(rec.reference, new, old), check_api(rec.old_code, new, old)
        assert after.ok is not False, (rec.id, "reference", after)
        assert before.ok is not True, (rec.id, "old_code", before)
        decided += after.ok is not None and before.ok is not None
    assert decided >= 0.8 * len(records), f"{decided}/{len(records)} decided"


# --- api_ok that cannot flatter: the record decides whether there is a verdict, not the answer ----------

NEW, OLD = "pandas.concat", "pandas.DataFrame.append"
GOOD = "import pandas as pd\ndef f(df, o):\n    return pd.concat([df, o])\n"
TRUNCATED = "import pandas as pd\ndef f(df, o):\n    return pd.concat([df,"  # cut off mid-generation


def _record(new_api, old_api, reference=GOOD, **kw):
    return TaskRecord(id="r", dataset=kw.pop("dataset", "migrations"),
                      update=UpdateInfo(library="pandas", new_api=new_api, old_api=old_api, **kw.pop("update", {})),
                      prompt="p", reference=reference, tests=("assert f(1, 2)",), **kw)


def test_a_truncated_answer_counts_as_false_in_the_denominator():
    assert check_api(TRUNCATED, NEW, OLD).ok is None  # what used to drop the answer from api_ok
    assert api_verdict(TRUNCATED, NEW, OLD) is False
    assert api_verdict(GOOD, NEW, OLD) is True
    # a method that breaks 15 answers of 16 and gets one right scores 1/16, not 1/1
    verdicts = [api_verdict(GOOD, NEW, OLD)] + [api_verdict(TRUNCATED, NEW, OLD)] * 15
    known = [v for v in verdicts if v is not None]
    assert len(known) == 16 and sum(known) / len(known) == pytest.approx(1 / 16)


def test_a_truncated_answer_is_false_through_the_eval_job():
    from jobs.evaluation.job import _mean, _sample_verdict

    rec = _record(NEW, OLD)
    per = [_sample_verdict(rec, s, [], set()) for s in [GOOD] + [TRUNCATED] * 15]
    assert [p["api_ok"] for p in per] == [True] + [False] * 15
    assert _mean([p["api_ok"] for p in per]) == pytest.approx(1 / 16)
    assert _sample_verdict(rec, None, [], set())["api_ok"] is False  # unanswered


@pytest.mark.parametrize("blank", [None, "", "  \n\n", "# TODO: use pd.concat\n"])
def test_a_blank_answer_is_false_on_a_decidable_record(blank):
    assert decidable(NEW, OLD)
    assert api_verdict(blank, NEW, OLD) is False
    assert record_api_verdict(_record(NEW, OLD), blank) is False


@pytest.mark.parametrize(
    "new, old, answer",
    [
        ("math.sin", "math.sin", "import math\nmath.sin(1.0)\n"),  # only behaviour changed
        ("math.sin", " math.sin", "import math\nmath.sin(1.0)\n"),
        ("numpy.sort", None, "import numpy as np\nnp.sort(a)\n"),  # no old API
        ("numpy.sort", "", "import numpy as np\nnp.sort(a)\n"),
        (None, "numpy.sort", "x = 1\n"),
        ("async def", "asyncio.coroutine", "import asyncio\nasync def f():\n    await asyncio.sleep(0)\n"),
        ("xml.etree.ElementTree.Element", "xml.etree.ElementTree.Element.getchildren",
         "import xml.etree.ElementTree as ET\n[c.tag for c in list(ET.fromstring(s))]\n"),
        ("pandas.read_csv(sep)", "pandas.read_csv", "import pandas as pd\npd.read_csv(f, sep=';')\n"),
        ("random.sample(sequence)", "random.sample(set)", "import random\nrandom.sample(list(s), 2)\n"),
    ],
)
def test_an_undecidable_record_is_none_for_every_answer(new, old, answer):
    assert not decidable(new, old)
    rec = _record(new, old, reference=answer)
    assert not record_check_applies(rec)
    for code in (answer, None, "", "# nothing\n", "def broken(:\n", "x = 1\n", GOOD):
        assert api_verdict(code, new, old) is None, code
        assert record_api_verdict(rec, code) is None, code


def test_record_level_exclusions():
    rec = _record(NEW, OLD)
    assert record_check_applies(rec) and record_api_verdict(rec, GOOD) is True
    # a control condition: the update shown is not the one installed
    control = _record(NEW, OLD, meta={"control": "random_update"})
    assert [record_api_verdict(control, c) for c in (GOOD, None, TRUNCATED)] == [None] * 3
    # a check the record's own reference fails says nothing about migration: n/a for every answer
    odd = _record(NEW, OLD, reference="def f(df, o):\n    return df.append(o)\n")
    assert [record_api_verdict(odd, c) for c in (GOOD, None, TRUNCATED)] == [None] * 3
    # GitChameleon: n/a by decision, stated for the report
    gc = _record("torch.stft", None, dataset="gitchameleon", reference="import torch\ntorch.stft(x, 4)\n")
    assert record_api_verdict(gc, "import torch\ntorch.stft(x, 4)\n") is None
    assert api_note("gitchameleon") == API_NOTES["gitchameleon"] and "n/a" in api_note("gitchameleon")
    assert api_note("migrations") is None


# --- CodeUpdateArena: a call passing an argument the update adds; renames; behaviour-only n/a --------

MEAN_UPDATE = """\
def mean(a, axis=None, dtype=None, out=None, keepdims=np._NoValue, *, where=np._NoValue, weights=None):
    if weights is not None:
        num = old_mean(np.multiply(a, weights), axis=axis, dtype=dtype, keepdims=keepdims, where=where)
        return num / old_mean(weights, axis=axis, where=where)
    return old_mean(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims, where=where)
setattr(numpy, 'mean', mean)
"""
NEXTAFTER_UPDATE = """\
def nextafter(x, y, steps=1):
    for _ in range(steps):
        x = old_nextafter(x, y)
    return x
setattr(math, 'nextafter', nextafter)
"""
SIN_BEHAVIOUR_UPDATE = """\
def sin(x):
    return old_sin(x * 3.141592653589793 / 180)
setattr(math, 'sin', sin)
"""


def _arena(path, update_code, reference, kind="add-argument", new_api=None):
    return TaskRecord(id="cua", dataset="codeupdatearena",
                      update=UpdateInfo(library=path.split(".")[0], old_api=path, new_api=new_api or path, kind=kind),
                      prompt="p", reference=reference, tests=("assert True",), update_code=update_code)


def test_codeupdatearena_added_argument():
    ref = "import numpy as np\ndef g(x, w):\n    return np.mean(x, weights=w)\n"
    rec = _arena("numpy.mean", MEAN_UPDATE, ref, kind="add-argument-supported_value(s)")
    assert record_check_applies(rec)
    assert record_api_verdict(rec, ref) is True
    assert record_api_verdict(rec, "from numpy import mean\nmean(x, axis=0, weights=w)\n") is True
    # the old API's call: the update is not used (this pair alone, numpy.mean/numpy.mean, is undecidable)
    assert api_verdict("import numpy as np\nnp.mean(x)\n", "numpy.mean", "numpy.mean") is None
    assert record_api_verdict(rec, "import numpy as np\nnp.mean(x * w) / np.mean(w)\n") is False
    assert record_api_verdict(rec, "import numpy as np\nnp.average(x, weights=w)\n") is False
    for broken in (None, "", "# np.mean(x, weights=w)\n", "import numpy as np\nnp.mean(x, weights="):
        assert record_api_verdict(rec, broken) is False


def test_codeupdatearena_added_positional_argument():
    ref = "import math\ndef g(x, n):\n    return math.nextafter(x, 10.0, n)\n"
    rec = _arena("math.nextafter", NEXTAFTER_UPDATE, ref)
    assert record_api_verdict(rec, ref) is True
    assert record_api_verdict(rec, "import math\nmath.nextafter(x, y, steps=3)\n") is True
    assert record_api_verdict(rec, "import math\nmath.nextafter(x, y)\n") is False
    assert record_api_verdict(rec, "import math\nmath.nextafter(*args)\n") is False  # no slot confirmed
    # an added argument the reference does not pass is not asked for: n/a
    plain = _arena("math.nextafter", NEXTAFTER_UPDATE, "import math\nmath.nextafter(x, y)\n")
    assert record_api_verdict(plain, ref) is None and record_api_verdict(plain, "") is None


def test_codeupdatearena_behaviour_only_update_is_na():
    ref = "import math\ndef g(d):\n    return math.sin(d)\n"
    rec = _arena("math.sin", SIN_BEHAVIOUR_UPDATE, ref, kind="modify-output-semantics")
    assert not record_check_applies(rec)
    for code in (ref, None, "", "import math\nmath.sin(math.radians(d))\n", "def broken(:\n"):
        assert record_api_verdict(rec, code) is None


def test_codeupdatearena_rename_and_added_function():
    rename = "def sine(x):\n    return old_sin(x)\ndel math.sin\nsetattr(math, 'sine', sine)\n"
    ref = "import math\ndef g(x):\n    return math.sine(x)\n"
    rec = _arena("math.sin", rename, ref, kind="modify-function-name", new_api="math.sine")
    assert record_api_verdict(rec, ref) is True
    assert record_api_verdict(rec, "import math\nmath.sin(x)\n") is False
    assert record_api_verdict(rec, "import math\nmath.sine(x) + math.sin(x)\n") is False  # old one not gone
    added = "def multicomb(n, k):\n    return 1\nsetattr(math, 'multicomb', multicomb)\n"
    ref = "import math\nmath.multicomb(4, [1, 3])\n"
    rec = _arena("math.comb", added, ref, kind="add-function", new_api="math.multicomb")
    assert record_api_verdict(rec, ref) is True
    assert record_api_verdict(rec, "import math\nmath.multicomb(4, [2]) * math.comb(4, 2)\n") is True  # comb stays
    assert record_api_verdict(rec, "import math\nmath.comb(4, 2)\n") is False


def test_codeupdatearena_file(shared_data):
    """On the real records: a verdict for most, the reference always passes it, a blank never does."""
    from data.codeupdatearena import load_codeupdatearena

    records = load_codeupdatearena(shared_data / "codeupdatearena" / "arena.dev.jsonl")[::3]  # every update kind
    decided = [r for r in records if record_check_applies(r)]
    assert 0.5 * len(records) <= len(decided) < len(records)  # behaviour-only updates stay n/a
    assert all(record_api_verdict(r, r.reference) is True for r in decided)
    assert not any(record_api_verdict(r, c) for r in decided for c in ("", None, r.reference[: len(r.reference) // 2]
                                                                      + "\n    return (("))


def test_gitchameleon_file_is_na(shared_data):
    from data.gitchameleon import load_gitchameleon

    records = load_gitchameleon(shared_data / "gitchameleon" / "dataset.dev.jsonl")
    assert not any(record_check_applies(r) for r in records)
    assert all(record_api_verdict(r, r.reference) is None for r in records)


def test_migration_set_verdicts():
    from data.migrations import load_migrations

    records = load_migrations()
    decided = [r for r in records if record_check_applies(r)]
    assert len(decided) >= 0.8 * len(records)
    for rec in decided:
        assert record_api_verdict(rec, rec.reference) is True, rec.id
        assert record_api_verdict(rec, rec.old_code) is False, rec.id
        assert record_api_verdict(rec, "") is False
