"""The forked child's side of the sandbox: run one program so that only a real run can pass.

A pass needs a mark that only the harness can write: the program's code and tests
run in a second thread, and the main thread, which no program code ever reaches,
writes the marks into memory shared with the server once that thread is done, and
only for the steps an audit hook (PEP 578) saw really complete:

- "the code ran" / "the tests ran to their end" are audit events that the harness's
  own frame raises after ``exec`` returned. The hook accepts one only from the
  program thread while that frame (captured before any program code ran) stands at
  the very instruction that raises it, and only after it saw that frame ``exec`` the
  harness's own compiled code. A program cannot move another frame's instruction
  pointer, so it cannot claim a step its tests did not finish;
- the hook ends the process, with an exit code naming the facility, on every
  Python-level route to the hook's state or the main thread's frames:
  ``sys._current_frames``, tracing and profiling, ``gc`` object walks, new audit
  hooks, and ctypes' audited raw reads (``string_at``, ``from_address``). Frames,
  tracebacks and ``sys._getframe`` stay usable (warnings, ``logging`` and pandas need
  them): the program thread's frames hold nothing secret. Loading libraries with
  ctypes stays allowed (scikit-learn's threadpoolctl does), as do hand-made code
  objects (``types.coroutine`` makes them);
- the process is not dumpable, so ``/proc/self/mem`` and ``ptrace`` are closed to it;
- Python signal handlers run only in the main thread and only the main thread can
  install them, so no program code runs inside the hook or the main thread; the hook
  and the main thread allocate no garbage-collected object after the program
  started, so no finalizer runs there either;
- the tests must leave ``builtins`` and ``os`` as they found them (checked after
  the code and after the tests): a patched ``len`` or ``os._exit`` is a failure.

Limits that no in-process guard removes: CPython is not memory-safe against code that
reads raw memory, and Python 3.11 audits only part of ctypes (``memmove`` and ``cast``
raise no event); a NumPy array interface with a raw address and crafted bytecode do the
same. The marks are random per program, so such code must walk the interpreter's own
structures to find them: a deliberate memory exploit, not a reward hack a policy stumbles on.
Python < 3.8 has no audit hooks: there the marks are written without the guard and
the server says so (``guarded: false``).
"""

from __future__ import annotations

import _thread
import builtins
import dis
import operator
import os
import sys
import traceback

# Exit codes a program cannot mistake for its own: TAMPER_BASE + index of the facility.
TAMPER_BASE = 200
# Routes to the hook's state or the main thread's frames, and ctypes' audited raw-memory reads.
DENIED = (
    "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile", "sys.addaudithook",
    "sys.monitoring.register_callback", "sys.remote_exec", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "ctypes.string_at", "ctypes.wstring_at", "ctypes.cdata",
)
OUT_OF_ORDER = TAMPER_BASE + len(DENIED)  # a harness step claimed from the wrong thread or place
GUARDED_MODULES = ("builtins", "os", "posix")
PROGRAM_STACK = 16 * 2**20  # the program thread's stack: twice a main thread's usual 8 MiB
PR_SET_DUMPABLE = 4
MARK_BYTES = 16  # run() writes the code mark at offset 0 of the shared mapping, the tests mark after it


def tamper_reason(returncode: int | None) -> str | None:
    """What a tamper exit code says the program used, or None for an ordinary exit."""
    if returncode is None or not TAMPER_BASE <= returncode <= OUT_OF_ORDER:
        return None
    return "a harness step claimed out of order" if returncode == OUT_OF_ORDER else DENIED[returncode - TAMPER_BASE]


def _body(code, test, scope, run, audit, snapshot, originals, result, done):
    """The program thread. The hook checks positions of the ``run`` and ``audit`` lines.

    The builtins/os check is written out in place, twice: a helper function's ``__code__`` could be
    replaced by the program, this frame's code cannot.

    The guarded modules must hold exactly the keys and objects they held before: built-ins
    come from ``originals`` (the program may replace the names), ``is`` never calls program
    code, and nothing allocates per entry (a forked child pays for every page it writes).
    """
    len_, all_, map_, is_ = originals
    try:
        audit("apimig.begin")  # the hook takes this frame and thread as the ones to watch
        run(code, scope)
        if not all_(len_(d) == len_(k) and all_(map_(is_, d, k)) and all_(map_(is_, d.values(), v)) for d, k, v in snapshot):
            raise RuntimeError("the program changed builtins or os: a patched harness cannot pass")
        audit("apimig.code_done")
        run(test, scope)
        if not all_(len_(d) == len_(k) and all_(map_(is_, d, k)) and all_(map_(is_, d.values(), v)) for d, k, v in snapshot):
            raise RuntimeError("the tests changed builtins or os: a patched harness cannot pass")
        audit("apimig.tests_done")
        result[0] = 0
    except SystemExit as exc:  # exiting early is never a pass: the tests did not reach their end
        result[0] = exc.code if isinstance(exc.code, int) and exc.code else 1
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:  # the program broke what printing needs (a patched len, say)
            pass
    finally:
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:
                pass
        done()


def _positions() -> tuple[frozenset, frozenset, frozenset, frozenset]:
    """Instruction offsets of _body's four checked lines: exec(code), code_done, exec(test), tests_done."""
    starts = dict(dis.findlinestarts(_body.__code__))
    by_line: dict[int, set[int]] = {}
    marks: dict[str, int] = {}
    line = _body.__code__.co_firstlineno
    for ins in dis.get_instructions(_body):
        line = starts.get(ins.offset) or line
        by_line.setdefault(line, set()).add(ins.offset)
        names = ins.argval if isinstance(ins.argval, tuple) else (ins.argval,)
        for key in ("code", "test", "apimig.code_done", "apimig.tests_done"):
            if key in names and ins.opname.startswith(("LOAD_FAST", "LOAD_CONST")):
                marks.setdefault(key, line)
    return tuple(frozenset(by_line[marks[k]]) for k in ("code", "apimig.code_done", "test", "apimig.tests_done"))


POSITIONS = _positions()


def _sentry(code, test, state, exit_now, get_ident, getframe):
    """The audit hook. No allocation of tracked objects and no exception on any path that
    returns once program code exists: nothing may give it a chance to run inside the hook."""
    at_code, at_code_done, at_test, at_tests_done = POSITIONS
    denied = {name: TAMPER_BASE + i for i, name in enumerate(DENIED)}
    started = [False, False]
    watched = [None, None]  # _body's frame and thread, from its first statement (before any program code)

    def hook(event, args):
        if event == "apimig.begin":
            if watched[0] is not None:
                exit_now(OUT_OF_ORDER)
            watched[0], watched[1] = getframe(1), get_ident()
            return
        frame, thread = watched
        if frame is None:
            return  # the program thread has not started: nothing of the program exists yet
        if event in denied:
            exit_now(denied[event])
        if event == "exec":
            if get_ident() == thread and args:
                where = frame.f_lasti
                if where in at_code and not started[0]:
                    if args[0] is not code:
                        exit_now(OUT_OF_ORDER)
                    started[0] = True
                elif where in at_test and not started[1]:
                    if args[0] is not test:
                        exit_now(OUT_OF_ORDER)
                    started[1] = True
        elif event == "apimig.code_done":
            if get_ident() != thread or frame.f_lasti not in at_code_done or not started[0]:
                exit_now(OUT_OF_ORDER)
            state[0] = True
        elif event == "apimig.tests_done":
            if get_ident() != thread or frame.f_lasti not in at_tests_done or not started[1]:
                exit_now(OUT_OF_ORDER)
            state[1] = True

    return hook


_snapshot = None


def snapshot() -> tuple:
    """The guarded modules' contents, taken once in the server after its imports: a forked child
    has the same objects at the same addresses, so the copy costs programs nothing."""
    global _snapshot
    _snapshot = tuple(
        (vars(m), tuple(vars(m)), tuple(vars(m).values()))
        for m in (sys.modules.get(name) for name in GUARDED_MODULES) if m is not None
    )
    return _snapshot


def run(request: dict, shared, marks: tuple[bytes, bytes], libc) -> None:
    """Run the program in this (already isolated and limited) process; never returns.

    ``shared`` is the server's shared mapping: the code mark goes at offset 0, the tests
    mark at ``MARK_BYTES`` (see ``jobs.sandbox.server``).
    """
    # Bound now: the program may replace any of these names before this thread uses them again.
    exit_now, get_ident, seek, write, type_, int_ = os._exit, _thread.get_ident, shared.seek, shared.write, type, int
    code_mark, tests_mark = marks
    tests_at = MARK_BYTES  # a local: the program may rebind this module's names
    del marks
    try:
        compiled_code = compile(request["code"], "<code>", "exec")
        compiled_test = compile(request["test"], "<test>", "exec")
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        exit_now(1)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # /proc/self/mem and ptrace closed to the program
    scope = {"__name__": "__main__", "__builtins__": builtins}
    result, state = [1], [False, False]
    done = _thread.allocate_lock()
    done.acquire()
    guarded = hasattr(sys, "addaudithook")
    if guarded:
        sys.addaudithook(_sentry(compiled_code, compiled_test, state, exit_now, get_ident, sys._getframe))
        audit = sys.audit
    else:
        steps = {"apimig.code_done": 0, "apimig.tests_done": 1}
        audit = lambda event: steps.get(event) is not None and state.__setitem__(steps[event], True)
    args = (compiled_code, compiled_test, scope, exec, audit, _snapshot or snapshot(),
            (len, all, map, operator.is_), result, done.release)
    _thread.stack_size(PROGRAM_STACK)
    _thread.start_new_thread(_body, args)
    _thread.stack_size(0)
    del args
    # From here on program code runs: this thread only waits, then writes, allocating nothing.
    done.acquire()
    if state[0]:
        seek(0)
        write(code_mark)
    if state[1]:
        seek(tests_at)
        write(tests_mark)
    code = result[0]
    exit_now(0 if state[1] else code if type_(code) is int_ and code else 1)
