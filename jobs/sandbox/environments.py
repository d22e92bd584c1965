"""Per-problem virtual environments: one per distinct (interpreter, requirement set), cached on disk.

:func:`build_env` turns an :class:`EnvSpec` into a venv under ``<cache_dir>/<key>``
(``uv venv`` + ``uv pip install --only-binary :all:``; venv + pip without uv). The
marker ``.apimig-env.json`` is written last, atomically; a directory without it is
half-built and gets rebuilt. Failures never raise: ``status="unsupported"`` + one-line
reason. A package with no usable wheel is retried from its sdist with compilers disabled
(``APIMIG_ENV_COMPILE=1`` enables them), ``setuptools<81`` is added as ``python -m venv``
would, ``exclude_newer`` resolves unpinned dependencies as of a date. The interpreter is
the requested ``X.Y`` when on this machine (``APIMIG_ENV_PYTHONS`` limits the choice), else
the running one if the spec allows substitution. torch envs (CUDA wheels, 2-4 GB each) need
``APIMIG_ALLOW_TORCH_ENVS=1`` (or an env already in the cache). See docs/gitchameleon.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal

from data.io import atomic_write_json

ENV_CACHE_VAR, ALLOW_TORCH_VAR = "APIMIG_ENV_CACHE", "APIMIG_ALLOW_TORCH_ENVS"
PYTHONS_VAR, COMPILE_VAR = "APIMIG_ENV_PYTHONS", "APIMIG_ENV_COMPILE"
MARKER = ".apimig-env.json"
LAYOUT = 1  # bump when the way envs are built changes: every key changes with it
INSTALL_FLAGS = ("--only-binary", ":all:")
BASE_PACKAGES = ("setuptools<81",)
NO_COMPILERS = {"CC": "false", "CXX": "false", "FC": "false", "CARGO": "false"}
INSTALL_TIMEOUT_S = 1800.0
TORCH_REASON = f"torch env too large for this machine (CUDA wheels, 2-4 GB each; set {ALLOW_TORCH_VAR}=1)"

EnvStatus = Literal["ready", "unsupported"]


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_VAR) or Path.home() / ".cache" / "apimig" / "envs").expanduser()


def normalize_requirement(req: str) -> str:
    """``"Werkzeug == 2.0.0"`` -> ``"werkzeug==2.0.0"`` (PEP 503 name, no blanks)."""
    req = "".join(req.split())
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(.*)", req)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() + m.group(2) if m else req


def requirement_name(req: str) -> str:
    return re.split(r"[\[<>=!~;@ ]", normalize_requirement(req), maxsplit=1)[0]


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str  # full, e.g. "3.10.13"
    implementation: str = "cpython"

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def _probe(path: str) -> Interpreter | None:
    code = "import platform; print(platform.python_implementation().lower(), platform.python_version())"
    try:
        out = subprocess.run([path, "-c", code], capture_output=True, text=True, timeout=20)
        impl, version = out.stdout.split()
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return Interpreter(str(Path(path).absolute()), version, impl) if out.returncode == 0 else None


@lru_cache(maxsize=1)
def _discover() -> dict[str, Interpreter]:
    """Every working CPython by minor version; the running one wins for its own."""
    cands = [getattr(sys, "_base_executable", None) or sys.executable, sys.executable]
    for v in range(6, 15):
        cands += [shutil.which(f"python3.{v}") or "", f"/usr/bin/python3.{v}", f"/usr/local/bin/python3.{v}"]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    cands += sorted(str(p) for p in pyenv.glob("3.*/bin/python3.*") if re.fullmatch(r"python3\.\d+", p.name))
    found: dict[str, Interpreter] = {}
    for path in dict.fromkeys(c for c in cands if c and os.access(c, os.X_OK)):
        interp = _probe(path)  # pyenv shims and broken links fail here
        if interp and interp.implementation == "cpython":
            found.setdefault(interp.minor, interp)
    for minor in [f"3.{v}" for v in range(7, 14) if f"3.{v}" not in found and _uv()]:
        ok, out = _run([_uv(), "python", "find", minor], 30)
        interp = _probe(out.split("\n", 1)[0].strip()) if ok else None  # stdout comes first
        if interp and interp.minor == minor:
            found[minor] = interp
    return found


def available_pythons() -> dict[str, Interpreter]:
    """``{"3.10": Interpreter, ...}``, limited to ``$APIMIG_ENV_PYTHONS`` when set."""
    only = os.environ.get(PYTHONS_VAR, "").replace(",", " ").split()
    return {m: i for m, i in _discover().items() if not only or m in only}


def _current() -> Interpreter:
    here = ".".join(map(str, sys.version_info[:2]))
    return _discover().get(here) or Interpreter(sys.executable, ".".join(map(str, sys.version_info[:3])))


@dataclass(frozen=True)
class EnvSpec:
    python: str | None  # "3.10"; None: the running interpreter's version
    requirements: tuple[str, ...]
    allow_python_substitution: bool = False  # use the running Python when ``python`` is not on this machine
    exclude_newer: str | None = None  # e.g. "2025-06-01": resolve unpinned dependencies as of then (uv only)

    @property
    def normalized(self) -> tuple[str, ...]:
        return tuple(sorted({normalize_requirement(r) for r in self.requirements if r.strip()}))

    def resolve(self) -> tuple[Interpreter | None, str]:
        """(interpreter to use, note): the note explains a substitution, or why there is no interpreter."""
        if not self.python:
            return _current(), ""
        want, have = ".".join(self.python.split(".")[:2]), available_pythons()
        if want in have:
            return have[want], ""
        if self.allow_python_substitution:
            return _current(), f"python {want} not available; substituted {_current().version}"
        listed = ", ".join(sorted(have, key=lambda m: tuple(map(int, m.split(".")))))
        return None, f"python {want} not available (have {listed}) and substitution not allowed"

    @property
    def key(self) -> str:
        """sha256 of the interpreter actually used, the normalized requirements and the install policy."""
        interp, _ = self.resolve()
        blob = json.dumps({"layout": LAYOUT, "python": f"{interp.implementation}-{interp.version}" if interp
                           else f"missing-{self.python}", "requirements": self.normalized, "flags": INSTALL_FLAGS,
                           "base": BASE_PACKAGES, "exclude_newer": self.exclude_newer})
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class EnvResult:
    key: str
    python_path: str | None  # the env's interpreter; None when unsupported
    status: EnvStatus
    reason: str = ""  # why unsupported; for a ready env, notes (Python substitution, sdist builds)
    python_version: str | None = None  # the interpreter actually used, e.g. "3.11.7"
    requested_python: str | None = None
    substituted: bool = False
    seconds: float = 0.0  # build time (0 when it came from the cache)

    @property
    def ready(self) -> bool:
        return self.status == "ready"


# Resolve a benchmark's unpinned dependencies as of its release: newer ones break old pins (gradio 3.x
# imports gradio_client.serializing, gone from later gradio_client releases).
DATASET_AS_OF = {"gitchameleon": "2025-06-01"}


def spec_for(record, allow_python_substitution: bool = False, exclude_newer: str | None = "dataset") -> EnvSpec:
    """The env a :class:`~data.records.TaskRecord` needs; ``exclude_newer="dataset"``: its dataset's date."""
    if exclude_newer == "dataset":
        exclude_newer = DATASET_AS_OF.get(record.dataset)
    return EnvSpec(record.env.python, tuple(record.env.requirements), allow_python_substitution, exclude_newer)


def _uv() -> str | None:
    local = Path(sys.executable).parent / "uv"
    return str(local) if local.exists() else shutil.which("uv")


_ERROR_LINE = re.compile(r"^\s*(?:×|╰─▶|error:|ERROR:|Because|\S*Error:)", re.I)


def failure_reason(output: str) -> str:
    """One line from installer output: the first error line with its continuation, hints dropped."""
    lines = [ln.rstrip() for ln in output.splitlines()]
    for i, line in enumerate(lines):
        if not _ERROR_LINE.match(line) or re.match(r"\s*×\s*No solution found", line):
            continue
        for nxt in lines[i + 1 : i + 6]:  # wrapped continuation lines of the same message
            if not nxt.strip() or _ERROR_LINE.match(nxt) or re.match(r"\s*(hint|help|note)\b", nxt):
                break
            line += " " + nxt
        text = re.sub(r"^\s*(?:×|╰─▶|error:|ERROR:)\s*", "", " ".join(line.split()))
        text = re.sub(r"^No solution found when resolving dependencies:?\s*(?:cause:\s*)?", "", text)
        text = re.sub(r",? we can conclude that your requirements are unsatisfiable\.?$", "", text)
        text = re.sub(r"\(from versions: [^)]*\)", "", text).strip()
        return text[:300] + ("..." if len(text) > 300 else "")
    tail = [ln.strip() for ln in lines if ln.strip()]
    return tail[-1][:300] if tail else "installer failed without output"


def _run(cmd: list[str], timeout: float, extra_env: dict[str, str] | None = None) -> tuple[bool, str]:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**env, **(extra_env or {})},
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"error: {Path(cmd[0]).name} {cmd[1]} timed out after {timeout:.0f}s"
    except OSError as exc:
        return False, f"error: {exc}"
    return out.returncode == 0, out.stdout + "\n" + out.stderr


_NO_WHEEL = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?(?:[<>=!~]\S*)? has no (?:usable wheels|wheels with)")


def _uv_install(uv: str, py: str, reqs: list[str], spec: EnvSpec, deadline: float) -> tuple[bool, str, list[str]]:
    """Wheels only; a package the resolver says has no usable wheel is retried from its sdist."""
    dated = ["--exclude-newer", spec.exclude_newer] if spec.exclude_newer else []
    no_cc = None if os.environ.get(COMPILE_VAR) == "1" else NO_COMPILERS
    source: list[str] = []
    while True:
        flags = [*INSTALL_FLAGS, *(f for name in source for f in ("--no-binary", name))]
        ok, out = _run([uv, "pip", "install", "--python", py, *dated, *flags, *reqs],
                       max(1.0, deadline - time.monotonic()), no_cc if source else None)
        new = [] if ok else [n for n in dict.fromkeys(map(normalize_requirement, _NO_WHEEL.findall(out))) if n not in source]
        if ok or not new or len(source) >= 8:
            return ok, out, source
        source += new


def _install(interp: Interpreter, env_dir: Path, spec: EnvSpec, timeout: float) -> tuple[bool, str, dict]:
    """Create the venv and install the spec: (ok, installer output, facts for the marker)."""
    py, deadline, uv = str(env_dir / "bin" / "python"), time.monotonic() + timeout, _uv()
    names = {requirement_name(r) for r in spec.normalized}
    reqs = [*spec.normalized, *(b for b in BASE_PACKAGES if requirement_name(b) not in names)]
    source: list[str] = []
    if uv:
        ok, out = _run([uv, "venv", "--quiet", "--python", interp.path, str(env_dir)], timeout)
        if ok:
            ok, out, source = _uv_install(uv, py, reqs, spec, deadline)
        freeze = [uv, "pip", "freeze", "--python", py]
    else:
        ok, out = _run([interp.path, "-m", "venv", str(env_dir)], timeout)
        if ok:
            ok, out = _run([py, "-m", "pip", "install", "-q", *INSTALL_FLAGS, *reqs], max(1.0, deadline - time.monotonic()))
        freeze = [py, "-m", "pip", "freeze"]
    built = re.findall(r"Failed to build `([^`]+)`", out) if not ok else []
    if built:  # one line instead of a build log
        errors = re.findall(r"^\s*((?:[\w.]*(?:Error|Exception)|error):\s*\S.*)$", out, re.M)
        last = re.sub(r"/[^\s:'\"]+", "<path>", (errors or ["?"])[-1])  # temp dirs differ per build
        why = "needs a C compiler" if re.search(r"'false'|\bfalse -", out) else f"failed: {last}"
        return False, f"error: no usable wheel for {', '.join(built)} and its sdist build {why}", {}
    if not ok:
        return False, out, {}
    frozen_ok, frozen = _run(freeze, 120)
    return True, "", {"installer": "uv" if uv else "pip", "built_from_sdist": source,
                      "frozen": frozen.split() if frozen_ok else []}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_env(spec: EnvSpec, cache_dir: str | Path | None = None, timeout_s: float = INSTALL_TIMEOUT_S) -> EnvResult:
    """The ready env for ``spec`` (from the cache when built before), or why it cannot be built."""
    start = time.monotonic()
    interp, note = spec.resolve()
    base = dict(key=spec.key, requested_python=spec.python)
    if interp is None:
        return EnvResult(python_path=None, status="unsupported", reason=note, **base)
    base.update(python_version=interp.version, substituted=bool(note))
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    env_dir, marker = cache_dir / spec.key, cache_dir / spec.key / MARKER
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(cache_dir / f".{spec.key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per key, across processes and Ray workers
            saved = _read_json(marker)
            if saved and saved.get("python_path"):  # this request (and its note) may differ from the builder's
                reason = "; ".join(filter(None, [note, saved.get("build_note", "")]))
                return EnvResult(python_path=saved["python_path"], status="ready", reason=reason, **base)
            if any(requirement_name(r) == "torch" for r in spec.normalized) and os.environ.get(ALLOW_TORCH_VAR) != "1":
                return EnvResult(python_path=None, status="unsupported", reason=TORCH_REASON, **base)
            if env_dir.exists() or env_dir.is_symlink():
                shutil.rmtree(env_dir, ignore_errors=True)  # half-built: no marker
            ok, output, facts = _install(interp, env_dir, spec, timeout_s)
            if not ok:
                shutil.rmtree(env_dir, ignore_errors=True)
                return EnvResult(python_path=None, status="unsupported", reason=failure_reason(output),
                                 seconds=time.monotonic() - start, **base)
            built = f"built from sdist: {', '.join(facts['built_from_sdist'])}" if facts["built_from_sdist"] else ""
            result = EnvResult(python_path=str(env_dir / "bin" / "python"), status="ready",
                               reason="; ".join(filter(None, [note, built])), seconds=time.monotonic() - start, **base)
            atomic_write_json(marker, {**asdict(result), "build_note": built, "requirements": spec.normalized,
                                       "interpreter": interp.path, "exclude_newer": spec.exclude_newer, **facts,
                                       "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            return result
    except Exception as exc:  # noqa: BLE001 - a broken env is a result, not a crash
        shutil.rmtree(env_dir, ignore_errors=True)
        return EnvResult(python_path=None, status="unsupported", reason=f"{type(exc).__name__}: {exc}"[:300], **base)


def build_envs(
    specs: Iterable[EnvSpec], cache_dir: str | Path | None = None, parallel: bool = True, num_cpus: float = 1.0
) -> dict[str, EnvResult]:
    """Build each distinct env once: as named Ray tasks when Ray is running or ``parallel`` (a local Ray
    is started if needed and left running), serially otherwise. Returns ``{key: EnvResult}``."""
    unique: dict[str, EnvSpec] = {}
    for spec in specs:
        unique.setdefault(spec.key, spec)
    cache_dir = str(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    import ray

    if len(unique) < 2 or not (parallel or ray.is_initialized()):
        return {key: build_env(spec, cache_dir) for key, spec in unique.items()}
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, namespace="apimig", include_dashboard=False)
    task = ray.remote(num_cpus=num_cpus, max_retries=0)(build_env)
    knobs = {v: os.environ[v] for v in (ALLOW_TORCH_VAR, PYTHONS_VAR, COMPILE_VAR) if v in os.environ}
    opts = {"runtime_env": {"env_vars": knobs}} if knobs else {}  # workers may predate these settings
    refs = {key: task.options(name=f"env {key[:8]}", **opts).remote(spec, cache_dir) for key, spec in unique.items()}
    out: dict[str, EnvResult] = {}
    for key, ref in refs.items():
        try:
            out[key] = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a lost worker is an unsupported env, not a crash
            out[key] = EnvResult(key, None, "unsupported", f"build task failed: {type(exc).__name__}: {exc}"[:300],
                                 requested_python=unique[key].python)
    return out


def cache_size_bytes(cache_dir: str | Path | None = None) -> int:
    """Disk used by the env cache, hard-linked files counted once (uv links files from its own cache)."""
    seen: dict[tuple[int, int], int] = {}
    for root, _dirs, files in os.walk(Path(cache_dir) if cache_dir is not None else default_cache_dir()):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
                seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
            except OSError:
                pass
    return sum(seen.values())
