"""Linux isolation for sandboxed programs: namespaces built once per server, joined per program.

Standard library only (the sandbox server runs under benchmark interpreters too).
Everything here needs root; without it :func:`prepare_namespaces` returns None and
programs run with resource limits only.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
DISK_MB, MAX_FILES = 64, 2048  # default bound on what one program may write, all files together
MNT_DETACH = 2
# World-writable places: read-only inside the sandbox.
READ_ONLY_SHARED = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/dev/mqueue", "/var/crash")


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda x: x.encode() if x is not None else None  # noqa: E731
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {dst}")


def blocked_ancestors(paths: list[str]) -> dict[str, set[str]]:
    """Directories on the way to ``paths`` that others may not traverse (e.g. /root, 0700),
    with the entries below them that the interpreter needs. The sandbox uid gets a
    0755 stand-in for each, holding only those entries."""
    out: dict[str, set[str]] = {}
    for path in paths:
        parts = os.path.realpath(path).split("/")[1:]
        for i in range(len(parts) - 1):
            anc = "/" + "/".join(parts[: i + 1])
            try:
                if not os.stat(anc).st_mode & 0o001:
                    out.setdefault(anc, set()).add(parts[i + 1])
                    break
            except OSError:
                break
    return out


def prepare_namespaces(root: str, blocked: dict[str, set[str]]) -> tuple[int, ...] | None:
    """Build the sandbox's network and mount namespaces once; children join them with setns.

    Creating a network namespace per program costs ~15 ms (mostly its teardown), joining
    one costs microseconds. Inside: no network interface at all, private System V IPC,
    the world-writable directories read-only, ``root`` (where each program gets its own
    0700 directory) writable, and a 0755 stand-in for each directory the sandbox uid
    could not traverse. Returns (mount, net, ipc) namespace fds, or None without root.
    """
    if os.geteuid() != 0:
        return None
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = b"0"
        try:
            os.close(ready_r)
            os.close(hold_w)
            libc = _libc()
            if libc.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC) == 0:
                _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host
                _expose(libc, root, blocked)
                for d in READ_ONLY_SHARED:
                    if os.path.isdir(d) and not os.path.islink(d):
                        _mount(libc, d, d, None, MS_BIND | MS_REC)
                        _mount(libc, None, d, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
                _mount(libc, root, root, None, MS_BIND)  # a bind of the now read-only /tmp...
                _mount(libc, None, root, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC)  # ...writable
                # A /proc of our own that lists only processes the reader may ptrace: a program sees
                # its own processes and no one else's command line or environment. Cheaper than a
                # PID namespace per program, which needs a mount namespace per program as well.
                _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
                ok = b"1"
        except OSError:
            ok = b"0"
        os.write(ready_w, ok)
        os.read(hold_r, 1)  # stay alive until the parent holds the namespaces open
        os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    ok = os.read(ready_r, 1) == b"1"
    fds = None
    if ok:
        fds = tuple(os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY) for ns in ("mnt", "net", "ipc"))
    os.close(hold_w)
    os.close(ready_r)
    os.waitpid(pid, 0)
    return fds


def private_disk(root: str, disk_mb: int, max_files: int) -> tuple[int, int] | None:
    """Give this (single-threaded, root) process a private mount namespace with a size-bounded
    tmpfs on ``root``: what programs write, all files together, is bounded in bytes and in
    files. The sandbox namespace prepared afterwards shares this tmpfs; it vanishes with us.
    Returns the bound in force, or None where it could not be set up."""
    libc = _libc()
    try:
        if libc.unshare(CLONE_NEWNS) != 0:
            return None
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
        _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
               f"size={disk_mb}m,nr_inodes={max_files},mode=0711")
    except OSError:
        return None
    return disk_mb, max_files


def resize_disk(root: str, current: tuple[int, int], disk_mb: int, max_files: int) -> tuple[int, int]:
    """Change the bound between programs (the tmpfs is empty then); keep the old one on failure."""
    if (disk_mb, max_files) == current:
        return current
    try:
        _mount(_libc(), None, root, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC,
               f"size={disk_mb}m,nr_inodes={max_files}")
    except OSError:
        return current
    return disk_mb, max_files


def _expose(libc, stage_root: str, blocked: dict[str, set[str]]) -> None:
    """Replace each non-traversable directory (e.g. /root, 0700) by a 0755 tmpfs holding
    bind mounts of just the entries the interpreter needs."""
    for i, (anc, names) in enumerate(sorted(blocked.items())):
        stages = []
        for name in sorted(names):
            stage = os.path.join(stage_root, f".stage{i}-{name}")
            os.mkdir(stage)
            _mount(libc, os.path.join(anc, name), stage, None, MS_BIND | MS_REC)
            stages.append((name, stage))
        _mount(libc, "tmpfs", anc, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for name, stage in stages:
            os.mkdir(os.path.join(anc, name))
            _mount(libc, stage, os.path.join(anc, name), None, MS_BIND | MS_REC)
            libc.umount2(stage.encode(), MNT_DETACH)
            os.rmdir(stage)


def isolate(uid: int | None, namespaces: tuple[int, ...] | None) -> bool:
    """Join the prepared namespaces and drop to the sandbox uid; False where that is not possible."""
    if uid is None or namespaces is None:
        return False
    libc = _libc()
    for fd, kind in zip(namespaces, (CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWIPC)):
        if libc.setns(fd, kind) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    return True
