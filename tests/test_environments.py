"""Per-problem envs: build, cache, refuse cleanly, rebuild half-built ones, group GitChameleon problems."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from jobs.sandbox import environments as envs
from jobs.sandbox.environments import MARKER, EnvSpec, build_env, build_envs, failure_reason, spec_for
from jobs.sandbox.executor import Program, SubprocessExecutor

SIX = EnvSpec(None, ("six==1.16.0",))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("envs")


def run_in(env, code: str, test: str):
    [res] = SubprocessExecutor(python=env.python_path).run([Program(code, test)], timeout_s=60)
    return res


def test_tiny_env_runs_a_program_with_the_pinned_version(cache):
    env = build_env(SIX, cache)
    assert env.ready, env.reason
    assert env.python_path.startswith(str(cache / SIX.key)) and env.python_version.startswith("3.")
    res = run_in(env, "import six, sys", f"assert six.__version__ == '1.16.0'\nassert sys.prefix != {sys.prefix!r}")
    assert res.passed, res.stderr
    marker = json.loads((cache / SIX.key / MARKER).read_text())
    assert "six==1.16.0" in marker["frozen"] and marker["status"] == "ready"


def test_second_build_comes_from_the_cache(cache):
    first = build_env(SIX, cache)
    start = time.monotonic()
    again = build_env(EnvSpec(None, ("Six == 1.16.0",)), cache)  # same env, spelled differently
    assert time.monotonic() - start < 1.0
    assert again.ready and again.python_path == first.python_path and again.key == first.key


def test_impossible_requirements_are_unsupported_not_errors(cache):
    for req, word in [("numpy==1.0.0", "numpy"), ("apimig-no-such-package-zz==1.0", "apimig-no-such-package-zz")]:
        env = build_env(EnvSpec(None, (req,)), cache)
        assert env.status == "unsupported" and env.python_path is None
        assert word in env.reason and "\n" not in env.reason, env.reason
        assert not (cache / env.key).exists()


def test_half_built_env_is_rebuilt(cache):
    spec = EnvSpec(None, ("six==1.15.0",))
    first = build_env(spec, cache)
    assert first.ready, first.reason
    (cache / spec.key / MARKER).unlink()  # as if the build had been killed before its end
    (cache / spec.key / "leftover").write_text("x")
    again = build_env(spec, cache)
    assert again.ready and again.seconds > 0 and not (cache / spec.key / "leftover").exists()
    assert run_in(again, "import six", "assert six.__version__ == '1.15.0'").passed


def test_pip_fallback_without_uv(tmp_path, monkeypatch):
    monkeypatch.setattr(envs, "_uv", lambda: None)
    env = build_env(SIX, tmp_path)
    assert env.ready, env.reason
    assert json.loads((tmp_path / SIX.key / MARKER).read_text())["installer"] == "pip"
    assert run_in(env, "import six", "assert six.__version__ == '1.16.0'").passed
    assert build_env(EnvSpec(None, ("numpy==1.0.0",)), tmp_path).status == "unsupported"


def test_missing_python_needs_the_substitution_policy(cache):
    refused = build_env(EnvSpec("2.5", ("six==1.16.0",)), cache)
    assert refused.status == "unsupported" and "python 2.5 not available" in refused.reason
    allowed = build_env(EnvSpec("2.5", ("six==1.16.0",), allow_python_substitution=True), cache)
    assert allowed.ready and allowed.substituted and "substituted" in allowed.reason
    assert allowed.key != refused.key and allowed.key == SIX.key  # keyed by the interpreter actually used


def test_torch_is_refused_unless_allowed(cache, monkeypatch):
    monkeypatch.delenv(envs.ALLOW_TORCH_VAR, raising=False)
    env = build_env(EnvSpec(None, ("torch==2.0.0",)), cache)
    assert env.status == "unsupported" and envs.ALLOW_TORCH_VAR in env.reason


def test_identical_specs_are_built_once(cache):
    out = build_envs([SIX, EnvSpec(None, ("six==1.16.0",)), EnvSpec(None, ("numpy==1.0.0",))], cache, parallel=False)
    assert len(out) == 2 and out[SIX.key].ready


def test_failure_reason_is_one_line():
    uv = "Using Python 3.11\nerror: No solution found when resolving dependencies\n  cause: Because numpy==1.21.0 has " \
         "no usable wheels and you require numpy==1.21.0, we can conclude that your requirements are unsatisfiable.\n"
    assert failure_reason(uv) == "Because numpy==1.21.0 has no usable wheels and you require numpy==1.21.0"
    pip = "ERROR: Could not find a version that satisfies the requirement numpy==1.0.0 (from versions: 1.3.0, 1.4.1)\n"
    assert failure_reason(pip) == "Could not find a version that satisfies the requirement numpy==1.0.0"


def test_gitchameleon_problems_share_envs(shared_data):
    from data.registry import load_dataset

    path = shared_data / "gitchameleon" / "dataset.dev.jsonl"
    if not path.exists():
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"{path} not found: see ../shared/data/README.md")
    records = load_dataset("gitchameleon", path)
    specs = [spec_for(r, allow_python_substitution=True) for r in records]
    keys = {spec.key for spec in specs}
    assert len(records) > 200 and 1 < len(keys) < len(records) / 2
    assert {spec.exclude_newer for spec in specs} == {envs.DATASET_AS_OF["gitchameleon"]}


@pytest.mark.slow
@pytest.mark.ray_subprocess  # starts Ray in-process (issue #27)
def test_parallel_builds_run_as_ray_tasks(cache):
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    try:
        specs = [SIX, EnvSpec(None, ("six==1.14.0",)), EnvSpec(None, ("six==1.14.0",))]
        out = build_envs(specs, cache, parallel=True)
        assert ray.is_initialized() and len(out) == 2 and all(e.ready for e in out.values())
        assert out[SIX.key].python_path == build_env(SIX, cache).python_path
    finally:
        if started:
            ray.shutdown()
