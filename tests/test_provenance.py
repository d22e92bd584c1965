"""Run provenance: what collect() records, how differences() reads, the provenance.json round trip."""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
from importlib import metadata

import pytest

from orchestrator import provenance

MODEL_INFO = {
    "spec": {"name": "smollm2-135m-q8", "prompt_format": "auto"},
    "path": "/cache/models/gguf-ab12cd34ef56ab78",
    "gguf": {"gguf_file": "SmolLM2-135M-Instruct-Q8_0.gguf"},
    "sha256_prefix": "ab12cd34ef56ab78",
    "prompt_format": "chat",
}


@pytest.fixture(scope="module")
def current() -> dict:
    return provenance.collect([0, 1], MODEL_INFO)


@pytest.mark.skipif(shutil.which("git") is None or not (provenance.PROJECT_ROOT / ".git").exists(),
                    reason="project not checked out with git here")
def test_collect_in_this_repo_has_commit_and_dirty_flag(current):
    assert re.fullmatch(r"[0-9a-f]{40}", current["git"]["commit"])
    assert isinstance(current["git"]["dirty"], bool)


def test_collect_records_real_versions_and_inputs(current):
    assert current["packages"]["torch"] == metadata.version("torch")
    assert set(current["packages"]) == set(provenance.PACKAGES)
    assert current["python"] == sys.version.split()[0]
    assert current["seeds"] == [0, 1]
    assert current["model"]["name"] == "smollm2-135m-q8"
    assert current["model"]["path"] == MODEL_INFO["path"]
    assert current["model"]["sha256_prefix"] == "ab12cd34ef56ab78"
    assert current["created_at"].endswith("+00:00")


def test_collect_keeps_the_model_error():
    prov = provenance.collect([0], {"spec": {"name": "org/offline"}, "error": "cannot reach the hub"})
    assert prov["model"]["name"] == "org/offline"
    assert prov["model"]["error"] == "cannot reach the hub"
    assert provenance.collect([0], None)["model"] is None


def test_collect_outside_a_repo_gives_none(tmp_path, monkeypatch):
    # Like a Ray working-dir copy: no .git. The ceiling keeps git from finding a repo above tmp_path.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    prov = provenance.collect([0], None, root=tmp_path)
    assert prov["git"] == {"commit": None, "dirty": None}


def test_code_hash_names_the_sources_without_git(tmp_path):
    for pkg in provenance.CODE_PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "m.py").write_text("x = 1\n")
    before = provenance.code_hash(tmp_path)
    assert before == provenance.code_hash(tmp_path)
    (tmp_path / "jobs" / "m.py").write_text("x = 2\n")
    assert provenance.code_hash(tmp_path) != before
    assert len(provenance.code_hash()) == 16


def test_collect_without_git_binary_gives_none(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert provenance.git_state() == {"commit": None, "dirty": None}


def test_differences_empty_for_identical(current):
    assert provenance.differences(current, copy.deepcopy(current)) == []


def test_differences_ignore_timestamp_and_platform(current):
    later = copy.deepcopy(current)
    later["created_at"] = "2099-01-01T00:00:00+00:00"
    later["platform"] = "Linux-other-kernel"
    assert provenance.differences(current, later) == []


def test_differences_name_each_changed_field():
    then = {
        "git": {"commit": "92ef224" + "0" * 33, "dirty": False},
        "code_hash": "00aa00aa00aa00aa",
        "python": "3.11.7",
        "packages": {"torch": "2.13.0", "transformers": "4.57.0", "vllm": None},
        "model": {"name": "m", "sha256_prefix": "ab12ab12ab12ab12"},
        "seeds": [0, 1],
        "platform": "a",
        "created_at": "x",
    }
    now = copy.deepcopy(then)
    now["git"] = {"commit": "50226b4" + "1" * 33, "dirty": True}
    now["code_hash"] = "11bb11bb11bb11bb"
    now["python"] = "3.12.1"
    now["packages"]["transformers"] = "4.58.1"
    now["packages"]["vllm"] = "0.6.3"
    now["model"]["sha256_prefix"] = "cd34cd34cd34cd34"
    now["seeds"] = [0, 1, 2]
    assert provenance.differences(then, now) == [
        "git commit: 92ef224 -> 50226b4",
        "working tree: clean -> uncommitted changes",
        "code (hash of the sources): 00aa00aa00aa00aa -> 11bb11bb11bb11bb",
        "python: 3.11.7 -> 3.12.1",
        "transformers: 4.57.0 -> 4.58.1",
        "vllm: not installed -> 0.6.3",
        "model file hash: ab12ab12ab12ab12 -> cd34cd34cd34cd34",
        "seeds: [0, 1] -> [0, 1, 2]",
    ]


def test_differences_tolerate_missing_sections(current):
    lines = provenance.differences({"seeds": [0, 1]}, current)
    if current["git"]["commit"]:
        assert f"git commit: unknown -> {current['git']['commit'][:7]}" in lines
    assert f"torch: not installed -> {current['packages']['torch']}" in lines


def test_write_load_round_trip(tmp_path, current):
    assert provenance.load(tmp_path) is None
    provenance.write(tmp_path, current)
    path = tmp_path / provenance.FILENAME
    assert json.loads(path.read_text()) == current
    assert provenance.load(tmp_path) == current
    assert [p.name for p in tmp_path.iterdir()] == [provenance.FILENAME]  # no temp file left behind


def test_load_rejects_a_corrupt_file(tmp_path):
    (tmp_path / provenance.FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match="provenance.json"):
        provenance.load(tmp_path)


def test_a_resume_warns_about_what_changed_since_the_run_started(tmp_path):
    from orchestrator import driver
    from orchestrator.spec import parse_spec

    spec = parse_spec({"name": "t", "seeds": [0, 1], "datasets": [{"name": "migrations"}],
                       "methods": [{"name": "r", "kind": "reference"}]})
    (tmp_path / "model.json").write_text(json.dumps({"spec": {"name": "tiny"}, "path": "/m"}))
    said: list[str] = []
    driver._record_provenance(spec, tmp_path, said.append)  # the first start records, says nothing
    assert said == [] and provenance.load(tmp_path)["seeds"] == [0, 1]
    recorded = provenance.load(tmp_path)
    recorded["packages"]["torch"] = "1.0.0"
    provenance.write(tmp_path, recorded)
    driver._record_provenance(spec, tmp_path, said.append)
    assert said == [f"warning: resuming with a different torch: 1.0.0 -> {provenance.package_versions()['torch']} "
                    "(finished jobs ran with the recorded one)"]
    assert provenance.load(tmp_path)["packages"]["torch"] == "1.0.0"  # the record stays what the run started with
