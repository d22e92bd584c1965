"""Running untrusted programs: the one interface every job uses to execute code.

A program is two parts, ``code`` (setup + candidate solution) and ``test``.
It passes only when the test part runs to its end: the bootstrap reports,
on a private pipe, when the code part finished and when the test finished, so
``sys.exit(0)`` before the tests cannot fake a pass.

:class:`SubprocessExecutor` starts one fresh interpreter per program. It is
the simple implementation; a faster sandbox replaces it behind the same
``run`` signature.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

Status = Literal["passed", "failed", "timeout"]
OUTPUT_CAP = 4096  # bytes of stdout/stderr kept per program


@dataclass(frozen=True)
class Program:
    code: str
    test: str = ""
    python: str | None = None  # interpreter of a per-problem environment; None = this one


@dataclass(frozen=True)
class ExecResult:
    status: Status
    code_ok: bool  # the code part ran without raising
    returncode: int | None
    duration_s: float
    stdout: str = ""
    stderr: str = ""
    note: str = ""  # why, when the executor itself ended the program (signal, truncated output)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Executor(Protocol):
    def run(self, programs: Sequence[Program], timeout_s: float) -> list[ExecResult]:
        """Run every program; results come back in the order of ``programs``."""
        ...


# Reads the program from stdin, reports progress on the fd named in argv[1].
_BOOTSTRAP = r"""
import json, os, sys
_fd = int(sys.argv[1])
_p = json.loads(sys.stdin.read())
sys.stdin = open(os.devnull)
sys.argv = ["program"]
_g = {"__name__": "__main__", "__builtins__": __builtins__}
exec(compile(_p["code"], "<code>", "exec"), _g)
os.write(_fd, b"C")
exec(compile(_p["test"], "<test>", "exec"), _g)
os.write(_fd, b"T")
"""


def _run_one(program: Program, timeout_s: float, python: str) -> ExecResult:
    python = program.python or python
    start = time.monotonic()
    status_r, status_w = os.pipe()
    with tempfile.TemporaryDirectory(prefix="apimig-exec-") as workdir:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": workdir,
            "TMPDIR": workdir,
            "MPLBACKEND": "Agg",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
        }
        proc = subprocess.Popen(
            [python, "-c", _BOOTSTRAP, str(status_w)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            pass_fds=(status_w,),
            start_new_session=True,  # its own process group, so we can kill all it spawned
        )
        os.close(status_w)
        timed_out = False
        try:
            out, err = proc.communicate(json.dumps({"code": program.code, "test": program.test}).encode(), timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            out, err = b"", b""
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if timed_out:
            out, err = proc.communicate()
        os.set_blocking(status_r, False)
        try:
            marks = os.read(status_r, 16)
        except BlockingIOError:
            marks = b""
        os.close(status_r)
    code_ok, tests_done = b"C" in marks, b"T" in marks
    if timed_out:
        status: Status = "timeout"
    else:
        status = "passed" if tests_done and proc.returncode == 0 else "failed"
    return ExecResult(
        status=status,
        code_ok=code_ok,
        returncode=proc.returncode,
        duration_s=time.monotonic() - start,
        stdout=out[-OUTPUT_CAP:].decode(errors="replace"),
        stderr=err[-OUTPUT_CAP:].decode(errors="replace"),
    )


class SubprocessExecutor:
    """One fresh interpreter per program, ``parallelism`` at a time."""

    def __init__(self, parallelism: int = 1, python: str | None = None):
        self.parallelism = max(1, parallelism)
        self.python = python or sys.executable

    def run(self, programs: Sequence[Program], timeout_s: float) -> list[ExecResult]:
        if self.parallelism == 1:
            return [_run_one(p, timeout_s, self.python) for p in programs]
        with ThreadPoolExecutor(self.parallelism) as pool:
            return list(pool.map(lambda p: _run_one(p, timeout_s, self.python), programs))
