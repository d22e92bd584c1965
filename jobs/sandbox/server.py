"""The warm sandbox process: imports heavy libraries once, then forks one child per program.

Run as ``python -m jobs.sandbox.server --preload numpy,torch [--uid N]``; it
speaks JSON lines on stdin/stdout (see ``jobs.sandbox.slots``). Only the standard
library is imported here, so it also runs under a benchmark's own interpreter.

Each child, before running untrusted code:
- starts a new session (its own process group) in a fresh private directory;
- when the server runs as root: enters new network and mount namespaces (no
  network; private tmpfs over the world-writable directories) and drops to an
  unprivileged uid owned by this server alone, so it cannot write outside its
  directory, signal its parent, or read other processes' environments, and so
  that every process it leaves behind can be killed by uid;
- gets limits on address space, CPU time, file size and (by uid) processes;
- loses the environment, stdin and every inherited descriptor.
The parent keeps the first bytes of stdout/stderr (the rest is drained and
dropped) and at the end kills the child's process group and every process it
left behind: the server is a child subreaper, so orphans come back to it.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import importlib
import json
import mmap
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

from jobs.sandbox import harness
from jobs.sandbox.isolation import (
    DISK_MB, MAX_FILES, blocked_ancestors, isolate, prepare_namespaces, private_disk, resize_disk,
)

OUTPUT_CAP = 64 * 1024
DRAIN_S = 0.5  # after the child exits, how long leftovers may keep its pipes busy
PR_SET_CHILD_SUBREAPER, MADV_HUGEPAGE, MADV_COLLAPSE = 36, 14, 25


def _limit(request: dict, uid: int | None) -> None:
    mem = int(request["memory_mb"]) * 1024 * 1024
    with open("/proc/self/statm") as fh:  # the preloaded libraries already take address space
        current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (current + mem, current + mem))
    cpu = int(request["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    fsize = int(request["file_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid is not None and os.geteuid() == 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (int(request["max_procs"]),) * 2)


def _child(request: dict, workdir: str, out_w: int, err_w: int, uid: int | None, shared, marks: tuple[bytes, bytes],
           namespaces: tuple[int, ...] | None):
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        os.setsid()
        os.chdir(workdir)
        # Move the pipe ends out of the way first: either may already be 0..2.
        out_w, err_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (out_w, err_w))
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        if namespaces is not None:  # keep the namespace fds (at 3, 4, 5) until we joined them
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 300) for fd in namespaces]
            namespaces = tuple(os.dup2(fd, 3 + i) for i, fd in enumerate(high))
        os.closerange(3 + len(namespaces or ()), 1 << 16)
        os.environ.clear()
        os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
        isolated = isolate(uid, namespaces)
        for fd in namespaces or ():
            os.close(fd)
        os.chdir(workdir)  # resolve it again inside the mount namespace
        _limit(request, uid if isolated else None)
        sys.stdin = open(os.devnull)
        sys.stdout = os.fdopen(1, "w", buffering=1, errors="replace")
        sys.stderr = os.fdopen(2, "w", buffering=1, errors="replace")
        sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
        sys.argv = ["program"]
        tempfile.tempdir = None
    except BaseException:
        os._exit(97)
    harness.run(request, shared, marks, libc)


def _kill_descendants() -> bool:
    """Kill every process left behind by the last program; True if there were any.

    The server is a child subreaper, so every orphaned descendant (a daemon that
    double-forked and called setsid included) is re-parented to it, never to init:
    its children lists hold all of them. Killing a child re-parents that child's
    own children to us, hence the rounds. One small read when nothing was left.
    """
    found = False
    for _ in range(1000):  # a fork bomb is bounded by RLIMIT_NPROC; this bounds us
        kids = set()
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as fh:
                kids.update(int(pid) for pid in fh.read().split())
        if not kids:
            return found
        found = True
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return found


def _kill_uid(uid: int) -> None:
    """Kill every process of the sandbox uid (a second pass when programs left processes behind).

    Rounds repeat while a fork bomb's survivors keep spawning.
    """
    for _ in range(50):
        found = False
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    # /proc/<pid> itself may show root (PR_SET_DUMPABLE=0): read the real uid.
                    with open(f"/proc/{entry.name}/status", "rb") as fh:
                        fields = dict(line.split(b":", 1) for line in fh.read().splitlines() if b":" in line)
                    if int(fields[b"Uid"].split()[0]) != uid or fields[b"State"].split()[0] == b"Z":
                        continue  # another user's, or already dead and waiting to be reaped
                    os.kill(int(entry.name), signal.SIGKILL)
                    found = True
                except (FileNotFoundError, ProcessLookupError, KeyError, IndexError, ValueError):
                    pass
        if not found:
            return


def run_program(request: dict, uid: int | None, namespaces: tuple[int, ...] | None, root: str, shared) -> dict:
    start = time.monotonic()
    isolated = uid is not None and namespaces is not None
    workdir = tempfile.mkdtemp(prefix="p-", dir=root)
    pipes = [os.pipe() for _ in range(2)]  # stdout, stderr
    (out_r, out_w), (err_r, err_w) = pipes
    # Fresh per program: "the code ran", "the tests ran to their end".
    marks = (os.urandom(harness.MARK_BYTES), os.urandom(harness.MARK_BYTES))
    shared.seek(0)
    shared.write(bytes(2 * harness.MARK_BYTES))
    pid, pidfd, wstatus = None, None, None
    buffers = {out_r: bytearray(), err_r: bytearray()}
    dropped = {out_r: 0, err_r: 0}
    timed_out = False
    try:
        if isolated:
            os.chown(workdir, uid, uid)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                _child(request, workdir, out_w, err_w, uid, shared, marks, namespaces)
            finally:
                os._exit(97)  # never back into the server's loop
        for fd in (out_w, err_w):
            os.close(fd)
        pipes = [(r, None) for r, _ in pipes]
        # pidfd (Python >= 3.9) wakes us when the child exits; else poll waitpid every 10 ms
        pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
        poller = select.poll()  # poll, not select: descriptors may be >= 1024
        for fd in list(buffers) + ([pidfd] if pidfd is not None else []):
            poller.register(fd, select.POLLIN)
        open_fds = set(buffers)
        deadline = start + float(request["timeout_s"])
        exited_at = None
        while open_fds or exited_at is None:
            now = time.monotonic()
            if exited_at is None and now >= deadline:
                timed_out = True
                break
            if exited_at is not None and now - exited_at > DRAIN_S:
                break  # leftovers (killed below) are keeping the pipes busy
            wait = deadline - now if exited_at is None else 0.05
            if pidfd is None and exited_at is None:
                wait = min(wait, 0.01)
            events = poller.poll(max(wait, 0) * 1000)
            if pidfd is None and exited_at is None:
                done, wstatus_now = os.waitpid(pid, os.WNOHANG)
                if done:
                    wstatus, exited_at = wstatus_now, time.monotonic()
            if exited_at is not None and not events:
                break
            for fd, _ in events:
                if fd == pidfd:
                    exited_at = time.monotonic()
                    poller.unregister(fd)
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.discard(fd)
                    poller.unregister(fd)
                    continue
                room = max(OUTPUT_CAP - len(buffers[fd]), 0)
                buffers[fd] += chunk[:room]
                dropped[fd] += max(len(chunk) - room, 0)
    finally:  # whatever happened above: no child, descriptor or directory outlives the program
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if wstatus is None:
                _, wstatus = os.waitpid(pid, 0)
            if _kill_descendants() and isolated:
                _kill_uid(uid)
        for r, w in pipes:
            for fd in (r, w):
                if fd is not None:
                    os.close(fd)
        if pidfd is not None:
            os.close(pidfd)
        shutil.rmtree(workdir, ignore_errors=True)
    written = shared[: 2 * harness.MARK_BYTES]
    code_ok = written[:harness.MARK_BYTES] == marks[0]
    tests_done = written[harness.MARK_BYTES:] == marks[1]
    returncode = os.waitstatus_to_exitcode(wstatus)
    tampered = harness.tamper_reason(returncode)
    if timed_out:
        status = "timeout"
    else:
        status = "passed" if tests_done and returncode == 0 and not tampered else "failed"
    notes = []
    if tampered:
        notes.append(f"the program reached into the harness ({tampered}): a failure, whatever its tests did")
    if returncode < 0:
        notes.append(f"killed by {signal.Signals(-returncode).name}")
    if dropped[out_r] or dropped[err_r]:
        notes.append(f"output truncated ({dropped[out_r] + dropped[err_r]} bytes dropped)")
    return {
        "status": status, "code_ok": code_ok, "returncode": returncode,
        "duration_s": time.monotonic() - start,
        "stdout": buffers[out_r].decode(errors="replace"), "stderr": buffers[err_r].decode(errors="replace"),
        "note": "; ".join(notes),
    }


def _collapse_heap_to_huge_pages() -> None:
    """Back the server's anonymous memory with 2 MiB pages (``MADV_COLLAPSE``, Linux >= 6.1).

    fork copies one page-table entry per 4 KiB page and exit frees them; a server that
    imported torch holds ~150 MB of heap, so every fork+exit cost ~20 ms of which ~14 ms
    goes away with huge pages. A child's copy-on-write write to a huge page splits it and
    copies 4 KiB, as before. Best effort: older kernels refuse and nothing changes.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    huge = 1 << 21
    with open("/proc/self/maps") as fh:
        maps = [line.split() for line in fh]
    for fields in maps:
        path = fields[5] if len(fields) > 5 else ""
        if "w" not in fields[1] or path not in ("", "[heap]"):
            continue  # file-backed mappings are not copied at fork anyway
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        start, end = (lo + huge - 1) & ~(huge - 1), hi & ~(huge - 1)
        if end > start:
            libc.madvise(start, end - start, MADV_HUGEPAGE)
            libc.madvise(start, end - start, MADV_COLLAPSE)


def _probe_isolation(uid: int | None, namespaces: tuple[int, ...] | None, root: str, shared) -> str:
    """"full" when a program really runs as the sandbox uid, without a network and seeing no
    other process, else "basic"."""
    if uid is None or namespaces is None:
        return "basic"
    probe = (f"import os, socket\nassert os.getuid() == {uid}\n"
             "assert str(os.getppid()) not in os.listdir('/proc'), 'other processes visible'\ntry:\n"
             "    socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError as e:\n"
             "    assert e.errno == 101, e\nelse:\n    raise AssertionError('network reachable')")
    reply = run_program({"code": probe, "test": "", "timeout_s": 30, "cpu_s": 30, "memory_mb": 1024,
                         "file_mb": 1, "max_procs": 64}, uid, namespaces, root, shared)
    return "full" if reply["status"] == "passed" else "basic"


def serve(preload: list[str], uid: int | None) -> None:  # noqa: C901
    # Programs must not import apimig's own packages by accident (they share names like `data`).
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]
    blocked = blocked_ancestors([p for p in sys.path if p] + [sys.prefix, sys.base_prefix, sys.executable])
    root = tempfile.mkdtemp(prefix="apimig-sandbox-")  # 0700 root-owned; sandbox uids only enter their own
    os.chmod(root, 0o711)
    disk = private_disk(root, DISK_MB, MAX_FILES) if uid is not None else None
    namespaces = prepare_namespaces(root, blocked) if uid is not None else None
    shared = mmap.mmap(-1, 4096)  # MAP_SHARED: each child's harness writes its marks here (harness.run)
    # The protocol owns copies of fds 0/1; the real 0/1 point at /dev/null so that stray
    # prints from libraries cannot corrupt it.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    loaded = []
    for name in preload:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # a library the benchmark may not need on this interpreter
            pass
    if "torch" in sys.modules:  # one thread (children are one process per program) and a first op,
        torch = sys.modules["torch"]  # so that lazy initialisation is paid once here, not per child
        torch.set_num_threads(1)
        (torch.ones(2, 2) @ torch.ones(2, 2)).sum().item()
    import gc

    harness.snapshot()  # what builtins and os hold after our imports: programs must leave them so
    gc.freeze()  # keep preloaded objects out of GC scans: fewer copy-on-write page faults per fork
    _collapse_heap_to_huge_pages()
    hello = {"ready": True, "preloaded": loaded, "pid": os.getpid(),
             "isolation": _probe_isolation(uid, namespaces, root, shared),
             "guarded": hasattr(sys, "addaudithook"), "disk_bound": disk is not None}
    proto_out.write((json.dumps(hello) + "\n").encode())
    proto_out.flush()
    for line in proto_in:
        request = json.loads(line)
        try:
            if disk is not None:
                disk = resize_disk(root, disk, int(request.get("disk_mb", disk[0])),
                                   int(request.get("max_files", disk[1])))
            reply = run_program(request, uid, namespaces, root, shared)
        except Exception as exc:  # the server itself must survive anything a program does
            reply = {"status": "failed", "code_ok": False, "returncode": None, "duration_s": 0.0,
                     "stdout": "", "stderr": "", "note": f"sandbox error: {type(exc).__name__}: {exc}"}
        proto_out.write((json.dumps(reply) + "\n").encode())
        proto_out.flush()
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preload", default="")
    parser.add_argument("--uid", type=int, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client decides when we stop (stdin EOF)
    # Orphans of programs become our children, not init's: see _kill_descendants.
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    serve([m for m in args.preload.split(",") if m], args.uid)


if __name__ == "__main__":
    main()
