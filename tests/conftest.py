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


# --- Ray stays out of the pytest process (issue #27) -----------------------------------------------------------
#
# ray.shutdown() does not stop everything ray.init() started in the driver: the GCS client's io thread, gRPC's
# timer and event-engine threads, the core worker's io pool and OpenCensus' harvester keep running inside
# _raylet.so until the process ends, and then race Python's finalization and the C++ static destructors:
# `make test` could exit 139 after every test had passed. A test that starts Ray in-process is therefore marked
# `ray_subprocess` and runs alone in a child pytest process (whose outcome, exit status included, is reported
# here); in the pytest process itself `ray.init` is refused, and nothing may leave a Ray session or a
# torch.distributed process group behind.

CHILD_ENV = "APIMIG_PYTEST_CHILD"  # set in a child: where it writes its test reports (JSON lines)
ISOLATED_TIMEOUT_S = 3600


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ray_subprocess: starts Ray in-process; runs alone in a child pytest process (issue #27)")


def _ray_module():
    try:
        import ray
    except ImportError:
        return None
    return ray


def _up() -> bool:
    ray, dist = sys.modules.get("ray"), sys.modules.get("torch.distributed")
    return bool((ray is not None and ray.is_initialized())
                or (dist is not None and dist.is_available() and dist.is_initialized()))


def _tear_down_ray_and_process_groups() -> list[str]:
    """Shut down what is still up; return what was."""
    left = []
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        left.append("a Ray session")
        ray.shutdown()
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        left.append("a torch.distributed process group")
        dist.destroy_process_group()
    return left


@pytest.fixture(autouse=True)
def _nothing_left_running(request, monkeypatch):
    """Outside a child, ``ray.init`` fails the test (mark it ``ray_subprocess``); after a test, a Ray session or
    process group it started (not one a wider-scoped fixture holds) is shut down and fails it."""
    if _up():
        yield  # a module- or session-scoped fixture's Ray: that fixture shuts it down
        return
    if not os.environ.get(CHILD_ENV):
        ray = _ray_module()
        if ray is not None:
            def refuse(*args, **kwargs):
                raise RuntimeError(f"{request.node.nodeid} starts Ray in the pytest process: mark it "
                                   "@pytest.mark.ray_subprocess (see tests/conftest.py, issue #27)")
            monkeypatch.setattr(ray, "init", refuse)
    yield
    left = _tear_down_ray_and_process_groups()
    if left:
        pytest.fail(f"{request.node.nodeid} left {' and '.join(left)} running (shut down now)", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_at_exit():
    yield
    left = _tear_down_ray_and_process_groups()
    if left:
        pytest.fail(f"the test session left {' and '.join(left)} running (shut down now)", pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("ray_subprocess") is None or os.environ.get(CHILD_ENV):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = _run_in_child(item)
    try:  # what earlier items set up here and the next item does not need (pytest's own teardown, skipped)
        item.session._setupstate.teardown_exact(nextitem)
    except Exception as exc:  # noqa: BLE001 - an earlier fixture's teardown error: this item's teardown fails
        reports[-1].outcome, reports[-1].longrepr = "failed", f"teardown of earlier fixtures: {exc!r}"
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _run_in_child(item) -> list:
    import json
    import re
    import subprocess

    from _pytest.reports import TestReport

    config = item.config
    work = config._tmp_path_factory.mktemp("isolated-" + re.sub(r"[^\w.-]", "_", item.name)[:40])
    results, log = work / "reports.jsonl", work / "output.log"
    command = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--basetemp={work / 'tmp'}", "--rootdir", str(config.rootpath), item.nodeid]
    env = {**os.environ, CHILD_ENV: str(results), "PYTHONFAULTHANDLER": "1"}
    with open(log, "wb") as out:
        try:
            rc = subprocess.run(command, cwd=config.rootpath, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=ISOLATED_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = None
    reports = []
    if results.exists():
        for line in results.read_text(encoding="utf-8").splitlines():
            report = config.hook.pytest_report_from_serializable(config=config, data=json.loads(line))
            if isinstance(report, TestReport) and report.nodeid == item.nodeid:
                reports.append(report)
    phases = {r.when: r for r in reports}
    expected_rc = 1 if any(r.failed for r in reports) else 0
    if rc == expected_rc and "teardown" in phases:
        return reports
    if rc is None:
        why = f"did not finish in {ISOLATED_TIMEOUT_S} s"
    elif rc < 0:
        why = f"was killed by signal {-rc}" + (" (segmentation fault)" if rc == -11 else "")
    else:
        why = f"exited with status {rc}"
    tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-80:])
    message = (f"the child pytest process running this test {why}"
               f"{' after the test had finished' if 'teardown' in phases else ''}.\n"
               f"command: {' '.join(command)}\nits output ({log}), last lines:\n{tail}")
    keywords = {k: 1 for k in item.keywords}
    if "teardown" in phases:
        teardown = phases["teardown"]
        teardown.outcome, teardown.longrepr = "failed", message
        return reports
    if "setup" not in phases:
        reports.append(TestReport(item.nodeid, item.location, keywords, "failed", message, "setup"))
    elif phases["setup"].passed and "call" not in phases:
        reports.append(TestReport(item.nodeid, item.location, keywords, "failed", message, "call"))
    reports.append(TestReport(item.nodeid, item.location, keywords, "passed", None, "teardown"))
    return reports


def pytest_runtest_logreport(report):
    """In a child: hand every test report to the parent (see ``_run_in_child``)."""
    target = os.environ.get(CHILD_ENV)
    if not target or _CHILD_CONFIG is None:
        return
    import json

    data = _CHILD_CONFIG.hook.pytest_report_to_serializable(config=_CHILD_CONFIG, report=report)
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps(data) + "\n")


_CHILD_CONFIG = None


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    global _CHILD_CONFIG
    _CHILD_CONFIG = session.config
