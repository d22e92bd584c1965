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
def test_collect_in_this_repo_has_commit_and_dirty_files(current):
    assert re.fullmatch(r"[0-9a-f]{40}", current["git"]["commit"])
    assert isinstance(current["git"]["dirty"], list)  # porcelain entries; [] = clean
    assert current["code_files"] > 100  # every tracked file, not only the *.py of four packages


def test_collect_records_real_versions_and_inputs(current):
    assert current["format"] == provenance.FORMAT
    assert current["packages"]["torch"] == metadata.version("torch")
    # the libraries that define the "current API" the benchmarks test against, among every installed one
    for name in ("pandas", "numpy", "scipy", "scikit-learn", "matplotlib"):
        assert current["packages"][name] == metadata.version(name), name
    assert len(current["packages"]) > 50
    assert current["packages"] == provenance.package_versions()
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


def _tree(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


PROJECT = {"jobs/m.py": "x = 1\n", "data/migrations/pandas.yaml": "old: a\n", "README.md": "r\n",
           ".gitignore": "artifacts/*\n!artifacts/.gitkeep\n__pycache__/\n", "artifacts/.gitkeep": ""}


def test_code_hash_names_every_file_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    _tree(tmp_path, PROJECT)
    before = provenance.code_hash(tmp_path)
    assert before == provenance.code_hash(tmp_path) and len(before) == 16
    # what a run or Python writes there is ignored, as .gitignore says
    _tree(tmp_path, {"artifacts/study/r1/metrics.json": "{}", "jobs/__pycache__/m.cpython-311.pyc": "x"})
    assert provenance.code_hash(tmp_path) == before
    (tmp_path / "data" / "migrations" / "pandas.yaml").write_text("old: b\n")  # not only *.py counts
    assert provenance.code_hash(tmp_path) != before
    assert len(provenance.code_hash()) == 16


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_a_working_dir_copy_hashes_like_its_checkout(tmp_path, monkeypatch):
    """``ray job submit`` uploads the tree without .git and what .gitignore leaves out: same code, same hash."""
    import subprocess

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo, copy = tmp_path / "repo", tmp_path / "copy"
    repo.mkdir()
    _tree(repo, PROJECT)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    clean = provenance.collect([0], None, root=repo)
    assert clean["git"]["dirty"] == [] and clean["code_files"] == len(PROJECT)
    _tree(repo, {"jobs/new.py": "y = 2\n", "artifacts/study/r1/metrics.json": "{}"})  # untracked; ignored
    (repo / "jobs" / "m.py").write_text("x = 3\n")  # an uncommitted edit
    dirty = provenance.collect([0], None, root=repo)
    assert dirty["git"]["dirty"] == [" M jobs/m.py", "?? jobs/new.py"]  # the ignored run output is not listed
    assert dirty["code_hash"] != clean["code_hash"]
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git"))
    assert (copy / "artifacts" / "study").exists()
    copied = provenance.collect([0], None, root=copy)
    assert copied["git"] == {"commit": None, "dirty": None}
    assert copied["code_hash"] == dirty["code_hash"]
    tree = provenance._tree(dirty["git"]["dirty"])
    assert provenance.differences(dirty, copied) == [f"git commit: {dirty['git']['commit'][:7]} -> unknown",
                                                     f"working tree: {tree} -> unknown"]


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
    assert not any(line.startswith("torch") for line in lines)  # not recorded: not a change


def test_differences_say_one_line_per_changed_package_of_the_full_list(current):
    later = copy.deepcopy(current)
    later["packages"]["pandas"] = "0.1"
    later["packages"]["brand-new"] = "1.0"
    del later["packages"]["numpy"]
    assert provenance.differences(current, later) == [  # the recorded (alphabetical) order, then new ones
        f"numpy: {current['packages']['numpy']} -> not installed",
        f"pandas: {current['packages']['pandas']} -> 0.1",
        "brand-new: not installed -> 1.0",
    ]


def test_an_older_provenance_is_compared_on_what_it_recorded(current):
    older = {  # written before FORMAT 2: a dozen packages, *.py hash, no dataset or weights hash
        "git": {"commit": current["git"]["commit"], "dirty": bool(current["git"]["dirty"])},
        "code_hash": "00aa00aa00aa00aa", "python": current["python"],
        "packages": {"torch": current["packages"]["torch"], "vllm": None, "transformers": "0.0.1"},
        "model": {"name": "smollm2-135m-q8", "path": MODEL_INFO["path"], "sha256_prefix": "ab12cd34ef56ab78"},
        "seeds": [0, 1],
    }
    lines = provenance.differences(older, current)
    assert lines == [f"transformers: 0.0.1 -> {current['packages']['transformers']}"]
    assert provenance.not_recorded(older) == [
        "versions of packages other than the ones it lists",
        "hash of all tracked files (its code hash covers *.py only)",
        "hash of the dataset records", "hash of the model weights"]
    assert provenance.not_recorded(current) == ["hash of the dataset records"]  # collected without records


# ---------------------------------------------------------------------------------------------- datasets

def _migrations(limit=None):
    from data.registry import load_dataset

    return load_dataset("migrations", None, limit)


def test_a_dataset_hash_changes_with_one_records_code_or_the_limit():
    import dataclasses

    recs = _migrations(limit=8)
    first = provenance.dataset_hashes({"migrations": recs})["migrations"]
    assert first["records"] == 8 and re.fullmatch(r"[0-9a-f]{64}", first["sha256"])
    assert provenance.dataset_hashes({"migrations": _migrations(limit=8)})["migrations"] == first  # reproducible
    edited = list(recs)
    edited[3] = dataclasses.replace(recs[3], reference=recs[3].reference + "\n# edited\n")
    assert provenance.dataset_hashes({"migrations": edited})["migrations"]["sha256"] != first["sha256"]
    retested = list(recs)
    retested[5] = dataclasses.replace(recs[5], tests=recs[5].tests + ("assert True",))
    assert provenance.dataset_hashes({"migrations": retested})["migrations"]["sha256"] != first["sha256"]
    assert provenance.dataset_hashes({"migrations": recs[:7]})["migrations"]["sha256"] != first["sha256"]
    assert provenance.dataset_hashes({"migrations": recs[::-1]})["migrations"]["sha256"] != first["sha256"]


def test_collect_records_each_datasets_hash_and_a_resume_names_a_changed_one(current):
    import dataclasses

    recs = _migrations(limit=4)
    prov = provenance.collect([0, 1], MODEL_INFO, records={"migrations": recs, "humaneval": []})
    assert set(prov["datasets"]) == {"migrations", "humaneval"}
    assert prov["datasets"]["migrations"]["records"] == 4
    changed = [dataclasses.replace(recs[0], prompt="other"), *recs[1:]]
    later = provenance.collect([0, 1], MODEL_INFO, records={"migrations": changed, "humaneval": []})
    then, now = prov["datasets"]["migrations"]["sha256"][:12], later["datasets"]["migrations"]["sha256"][:12]
    assert provenance.differences(prov, later) == [
        f"dataset migrations: 4 records, sha256 {then} -> 4 records, sha256 {now}"]


# ---------------------------------------------------------------------------------------------- models

def test_the_tiny_model_has_a_weights_hash_from_its_recipe(monkeypatch):
    from jobs.inference import models

    prov = provenance.collect([0], {"spec": {"name": "tiny"}, "path": "/not/built/here", "prompt_format": "chat"})
    sha = prov["model"]["sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", sha) and prov["model"]["weights_source"].startswith("tiny recipe")
    assert provenance.model_summary({"spec": {"name": "tiny"}, "path": "/elsewhere"})["sha256"] == sha
    monkeypatch.setitem(models.TINY_CONFIG, "seed", 1)  # another seed builds other weights
    provenance.tiny_recipe_sha256.cache_clear()
    try:
        assert provenance.model_summary({"spec": {"name": "tiny"}, "path": "/m"})["sha256"] != sha
    finally:
        provenance.tiny_recipe_sha256.cache_clear()


def _model_dir(root, weights: bytes):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"model_type": "qwen2"}')
    (root / "tokenizer.json").write_text("{}")
    (root / "model.safetensors").write_bytes(weights)
    (root / "README.md").write_text("a model card")
    return root


def test_a_local_model_directory_is_hashed_by_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.HASH_CACHE_ENV, str(tmp_path / "hashes.json"))
    weights = bytes(range(256)) * 8192  # 2 MiB: above the cache threshold
    d = _model_dir(tmp_path / "m", weights)
    info = {"spec": {"name": str(d)}, "path": str(d), "prompt_format": "chat"}
    model = provenance.collect([0], info)["model"]
    assert re.fullmatch(r"[0-9a-f]{64}", model["sha256"])
    assert model["weights_files"] == 3 and model["weights_bytes"] == sum(
        (d / f).stat().st_size for f in ("config.json", "tokenizer.json", "model.safetensors"))  # no README
    assert model["weights_source"] == str(d)
    (d / "README.md").write_text("an edited card")
    assert provenance.model_summary(info)["sha256"] == model["sha256"]
    (d / "model.safetensors").write_bytes(weights[:-1] + b"\x01")  # one byte of the weights
    assert provenance.model_summary(info)["sha256"] != model["sha256"]
    missing = provenance.model_summary({"spec": {"name": "m"}, "path": str(tmp_path / "gone")})
    assert missing["sha256"] is None and "no model files" in missing["weights_source"]


def test_large_model_files_are_read_once_per_version(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.HASH_CACHE_ENV, str(tmp_path / "hashes.json"))
    d = _model_dir(tmp_path / "m", b"w" * (2 << 20))
    first = provenance.weights_hash(d)["sha256"]
    read: list[str] = []
    real = provenance._stream_sha256
    monkeypatch.setattr(provenance, "_stream_sha256", lambda p: read.append(p.name) or real(p))
    assert provenance.weights_hash(d)["sha256"] == first
    assert "model.safetensors" not in read  # from the cache (a resume, another process)
    (d / "model.safetensors").write_bytes(b"v" * (2 << 20))  # same size, new mtime and content
    assert provenance.weights_hash(d)["sha256"] != first and "model.safetensors" in read


def test_a_hub_model_is_hashed_from_its_local_snapshot(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv(provenance.HASH_CACHE_ENV, str(tmp_path / "hashes.json"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    info = {"spec": {"name": "org/model"}, "path": "org/model", "prompt_format": "chat"}
    absent = provenance.model_summary(info)
    assert absent["sha256"] is None and "not in the local hub cache" in absent["weights_source"]
    repo = tmp_path / "hub" / "models--org--model"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _model_dir(repo / "snapshots" / commit, b"hub weights")
    model = provenance.model_summary(info)
    assert model["sha256"] == provenance.weights_hash(repo / "snapshots" / commit)["sha256"]
    assert commit in model["weights_source"]


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

    spec = parse_spec({"name": "t", "seeds": [0, 1], "datasets": [{"name": "migrations", "limit": 3}],
                       "methods": [{"name": "r", "kind": "reference"}]})
    records = driver._load_records(spec)
    (tmp_path / "model.json").write_text(json.dumps({"spec": {"name": "tiny"}, "path": "/m"}))
    said: list[str] = []
    driver._record_provenance(spec, tmp_path, said.append, records)  # the first start records, says nothing
    assert said == [] and provenance.load(tmp_path)["seeds"] == [0, 1]
    assert provenance.load(tmp_path)["datasets"]["migrations"]["records"] == 3
    driver._record_provenance(spec, tmp_path, said.append, records)  # nothing changed: nothing said
    assert said == []
    recorded = provenance.load(tmp_path)
    recorded["packages"]["torch"] = "1.0.0"
    provenance.write(tmp_path, recorded)
    driver._record_provenance(spec, tmp_path, said.append, records)
    assert said == [f"warning: resuming with a different torch: 1.0.0 -> {provenance.package_versions()['torch']} "
                    "(finished jobs ran with the recorded one)"]
    assert provenance.load(tmp_path)["packages"]["torch"] == "1.0.0"  # the record stays what the run started with


def test_resuming_a_run_with_an_older_provenance_says_what_it_cannot_check(tmp_path):
    from orchestrator import driver
    from orchestrator.spec import parse_spec

    spec = parse_spec({"name": "t", "datasets": [{"name": "migrations", "limit": 3}],
                       "methods": [{"name": "r", "kind": "reference"}]})
    (tmp_path / "model.json").write_text(json.dumps({"spec": {"name": "tiny"}, "path": "/m"}))
    now = provenance.collect([0], {"spec": {"name": "tiny"}, "path": "/m"})
    provenance.write(tmp_path, {"git": now["git"], "code_hash": "00aa00aa00aa00aa", "python": now["python"],
                                "packages": provenance.package_versions(provenance.PACKAGES),
                                "model": {"name": "tiny", "path": "/m", "sha256_prefix": None}, "seeds": [0]})
    said: list[str] = []
    driver._record_provenance(spec, tmp_path, said.append, driver._load_records(spec))
    assert len(said) == 1 and said[0].startswith("note: not checked") and "hash of the dataset records" in said[0]
