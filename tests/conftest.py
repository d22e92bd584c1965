from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data.registry import DATA_DIR_ENV, data_dir  # noqa: E402

HOW_TO_GET = (
    "benchmark files not found under {d}: put CodeUpdateArena and GitChameleon there "
    "(see ../shared/data/README.md) or set " + DATA_DIR_ENV
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark directory; skipped where absent, except under CI=true where that is a failure."""
    d = data_dir()
    if not d.is_absolute():
        d = (ROOT / d).resolve()
    if not (d / "codeupdatearena").is_dir():
        message = HOW_TO_GET.format(d=d)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return d


@pytest.fixture
def in_repo(monkeypatch):
    """Run with the repository root as working directory (as the CLI expects)."""
    monkeypatch.chdir(ROOT)
    return ROOT
