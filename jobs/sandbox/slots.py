"""The fast sandbox: warm servers that fork one isolated child per program (see ``jobs.sandbox.server``).

Start-up is paid once per server (``import torch`` and friends), not per
program; forking gives every program a pristine copy of the preloaded
interpreter, so monkey-patching ``math.sin`` or ``torch.stack`` cannot leak into
the next program. :class:`SandboxExecutor` implements ``jobs.sandbox.executor.Executor``
with N servers on this machine; ``jobs.sandbox.pool`` spreads work over Ray actors.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import queue
import re
import select
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from jobs.evaluation.metrics import parse
from jobs.sandbox.executor import ExecResult, Program
from jobs.sandbox.isolation import DISK_MB, MAX_FILES

ROOT = Path(__file__).resolve().parents[2]  # the repository root: servers run `-m jobs.sandbox.server` from it
# Imported by every server before it forks: cheap to fork, and common in benchmark programs.
BASE_PRELOAD = (
    "typing", "math", "cmath", "re", "itertools", "functools", "collections", "random", "decimal", "fractions",
    "string", "operator", "statistics", "json", "datetime", "copy", "heapq", "bisect", "dataclasses", "enum",
    "unittest", "warnings", "numbers", "io", "textwrap",
    # numpy loads these lazily; programs use them often (np.testing, np.random), so every child
    # would import them again
    "numpy", "numpy.random", "numpy.testing", "numpy.linalg", "numpy.fft", "numpy.ma", "numpy.polynomial",
)
# Heavy modules: a program that imports one runs on a server that preloaded it. Forking a
# process costs time in proportion to its memory, so they are not all loaded everywhere.
DEFAULT_PRELOAD = ("sympy", "torch", "pandas", "scipy", "sklearn", "matplotlib.pyplot", "pytest")
UID_BASE, UID_SLOTS = 61000, 512
UID_LOCK_DIR = Path("/run/apimig-sandbox-uids")  # root-only: not in a world-writable directory


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 4096  # address space on top of what the preloaded server already maps
    file_mb: int = 16  # largest file a program may write
    max_procs: int = 64  # processes (and threads) of the sandbox uid, when running as root
    cpu_s: int | None = None  # default: the wall-clock timeout, rounded up, plus one
    disk_mb: int = DISK_MB  # everything a program writes, all files together (as root: a tmpfs)
    max_files: int = MAX_FILES  # files and directories it may create (as root)


def _claim_uid() -> tuple[int | None, object | None]:
    """A uid no other sandbox server on this machine uses (held by an flock), or None if not root."""
    if os.geteuid() != 0:
        return None, None
    UID_LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = UID_LOCK_DIR.lstat()
    if st.st_uid != 0 or st.st_mode & 0o077 or UID_LOCK_DIR.is_symlink():
        raise RuntimeError(f"{UID_LOCK_DIR} must be a root-owned 0700 directory")
    for uid in range(UID_BASE, UID_BASE + UID_SLOTS):
        fd = os.open(UID_LOCK_DIR / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fh = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fh
        except BlockingIOError:
            fh.close()
    raise RuntimeError("no free sandbox uid")


def _server_env() -> dict[str, str]:
    # A clean environment: secrets in ours never reach a program, not even via /proc.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        # NumPy asks for transparent huge pages on big arrays; in a fresh child each first touch then
        # waits for the kernel to find (compact) a 2 MiB page: measured 1.3-2.6x slower sandbox runs.
        "NUMPY_MADVISE_HUGEPAGE": "0",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(ROOT),
    }


class ForkServer:
    """One warm server process; not thread-safe (one program at a time)."""

    def __init__(self, python: str | None = None, preload: Sequence[str] = DEFAULT_PRELOAD):
        self.python = python or sys.executable
        self.preload = tuple(preload)
        self.proc: subprocess.Popen | None = None
        self.uid, self._uid_lock = _claim_uid()
        self.preloaded: list[str] = []
        self.isolation = "unknown"  # "full" (namespaces + private uid, needs root) or "basic"
        self.guarded = False  # the harness guard (audit hooks: Python >= 3.8), see jobs.sandbox.harness
        self.disk_bound = False  # all files together bounded (a tmpfs: needs root)

    def start(self) -> None:
        args = [self.python, "-m", "jobs.sandbox.server", "--preload", ",".join(BASE_PRELOAD + self.preload)]
        if self.uid is not None:
            args += ["--uid", str(self.uid)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=_server_env(), cwd="/",
        )
        hello = self._read_line(timeout=300)
        if hello is None:
            self.close()
            raise RuntimeError(f"sandbox server did not start ({self.python})")
        info = json.loads(hello)
        self.preloaded, self.isolation = info["preloaded"], info["isolation"]
        self.guarded, self.disk_bound = info.get("guarded", False), info.get("disk_bound", False)

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc and self.proc.stdout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.decode() if line else None

    def run(self, program: Program, timeout_s: float, limits: Limits = Limits()) -> ExecResult:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        request = {
            "code": program.code, "test": program.test, "timeout_s": timeout_s,
            "cpu_s": limits.cpu_s or int(timeout_s) + 1, **{k: v for k, v in asdict(limits).items() if k != "cpu_s"},
        }
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            line = self._read_line(timeout=timeout_s + 60)
        except (BrokenPipeError, OSError):
            line = None
        if line is None:  # the server died or hung: never blame the next program for it
            self.close()
            return ExecResult("failed", False, None, timeout_s, note="sandbox server died")
        reply = json.loads(line)
        return ExecResult(**reply)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()  # EOF: the server cleans up its directory and exits
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


def imported_packages(source: str) -> set[str]:
    """Top-level packages a program imports, anywhere in it (regex fallback if it does not parse)."""
    try:
        tree = parse(source)
    except (SyntaxError, ValueError):
        return set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", source, re.M))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


class Sandbox:
    """One execution slot: routes each program to a warm server that preloaded exactly the
    heavy modules it imports.

    Forking costs time in proportion to the parent's memory (about 30 ms with torch
    loaded on the 2-core machine, under 1 ms for a bare interpreter), so a program that
    only needs ``math`` should not fork a process holding torch. Servers start on first
    use and stay warm.
    """

    def __init__(self, python: str | None = None, preload: Sequence[str] = DEFAULT_PRELOAD, max_servers: int = 6):
        self.python = python
        self.preload = tuple(preload)
        self.max_servers = max_servers
        # (interpreter, preloaded modules) -> server; insertion order = least recently used first
        self.servers: dict[tuple[str | None, tuple[str, ...]], ForkServer] = {}

    def profile(self, program: Program) -> tuple[str | None, tuple[str, ...]]:
        """Which server fits: the program's interpreter, and the heavy modules it imports."""
        wanted = imported_packages(program.code + "\n" + program.test)
        if program.python:  # a per-problem environment: keep its imported packages warm
            return program.python, tuple(sorted(wanted))
        return None, tuple(m for m in self.preload if m.split(".")[0] in wanted)

    def server_for(self, profile: tuple[str | None, tuple[str, ...]]) -> ForkServer:
        server = self.servers.pop(profile, None)
        if server is None:
            if len(self.servers) >= self.max_servers:
                oldest = next(iter(self.servers))
                self.servers.pop(oldest).close()
            server = ForkServer(profile[0] or self.python, profile[1])
            server.start()
        self.servers[profile] = server
        return server

    def warm(self, profiles: Sequence[tuple[str | None, tuple[str, ...]]]) -> None:
        """Start the servers for these profiles now (each import is paid once, here)."""
        for python, modules in profiles:
            self.server_for((python, tuple(modules)))

    @property
    def isolation(self) -> str:
        return self.server_for((None, ())).isolation

    def run(self, program: Program, timeout_s: float, limits: Limits = Limits()) -> ExecResult:
        return self.server_for(self.profile(program)).run(program, timeout_s, limits)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()


class SandboxExecutor:
    """``parallelism`` sandbox slots on this machine; results in input order."""

    def __init__(
        self,
        parallelism: int = 1,
        python: str | None = None,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        limits: Limits = Limits(),
    ):
        self.limits = limits
        self.slots = [Sandbox(python, preload) for _ in range(max(1, parallelism))]

    def run(
        self, programs: Sequence[Program], timeout_s: float, progress: Callable[[int], None] | None = None
    ) -> list[ExecResult]:
        idle: queue.Queue[Sandbox] = queue.Queue()
        for slot in self.slots:
            idle.put(slot)

        def one(program: Program) -> ExecResult:
            slot = idle.get()
            try:
                return slot.run(program, timeout_s, self.limits)
            finally:
                idle.put(slot)
                if progress:
                    progress(1)

        with ThreadPoolExecutor(len(self.slots)) as pool:
            return list(pool.map(one, programs))

    def close(self) -> None:
        for slot in self.slots:
            slot.close()

    def __enter__(self) -> "SandboxExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
