"""The api_ok metric (jobs.evaluation.api_check): static detection of new/old API use."""

from __future__ import annotations

import textwrap

import pytest

from jobs.evaluation.api_check import ApiUsage, check_api, uses_api


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
