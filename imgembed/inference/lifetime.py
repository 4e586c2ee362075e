"""Helper processes that never outlive the process that started them.

A process killed with SIGKILL (the OOM killer, ``kill -9``, a laptop closed mid-run) runs no
cleanup, so nothing it started is told to stop. A ``ProcessPoolExecutor`` worker then waits
forever on a pipe whose write end its sibling workers also hold; a local Ray cluster's dashboard
and runtime-env agents retry the dead GCS for a minute. Two tools, both torch-free:

:func:`tie_to_parent`, called first thing in a worker (the decode pool's initialiser, a
DataLoader ``worker_init_fn``), makes the worker die within about a second of the process that
started it, however that process died:

- On Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker the moment its
  parent goes. The signal fires when the parent *thread* that forked the worker exits, not the
  parent process, so it is armed only where the parent's main thread (which lives as long as
  the process) forked this worker: ``/proc/<ppid>/task/<ppid>/children`` lists the process.
  Under Python 3.11's default ``fork`` start method a ``ProcessPoolExecutor`` forks all its
  workers from the thread of the first ``submit()``, so a pool used from ``imgembed index`` (its
  main thread) gets the kernel's guarantee, and one used from another thread (a library caller,
  a server) gets the watch below only, and is never killed while its parent lives. Under
  ``forkserver`` the worker's parent is the single-threaded fork server, which exits when the
  pool's process does, so the signal is armed and the chain holds; under ``spawn`` a worker is a
  child of the thread that submitted, checked as under ``fork``.
- Everywhere, a daemon thread checks every :data:`POLL_S` seconds that ``parent`` is still an
  ancestor of this process (its parent pid, or on Linux further up through ``/proc``, for a fork
  server in between), and kills the process once it is not. A dead parent's children are
  re-parented at once (to init or a sub-reaper), so the check cannot be fooled by a zombie or a
  reused pid. The same check runs once right after ``prctl``: the parent may have died before
  the worker got that far. The thread needs the GIL, so it can lag a C call that holds it.

:class:`Reaper` covers processes the caller does not start itself: a local Ray cluster. Ray
kills its head processes (GCS, raylet, monitor, dashboard, log monitor) with the driver through
``PR_SET_PDEATHSIG`` and its workers notice the raylet's death in about a second, but the
dashboard and runtime-env agents, children of the raylet, outlive a SIGKILLed driver by about 60 s
(they report the raylet's death to the dead GCS first; measured with Ray 2.x on Linux). A
:class:`Reaper` is a small watchdog process that keeps a list of the driver's descendants and
kills them once the driver dies. (Marking them with an environment variable does not work: the
agents' process titles overwrite what /proc shows of their environment.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL_S = 0.5  # how often a tied worker, or a reaper, checks its parent
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LINUX = sys.platform.startswith("linux")


def tie_to_parent(parent: int, *, poll: float = POLL_S) -> None:
    """Make this process die (SIGKILL) when process ``parent`` dies, however it dies.

    ``parent`` is the pid of the process that started this one, as it saw itself
    (``os.getpid()`` there, passed along): not ``os.getppid()`` here, which is already init's if
    the parent died before this call. If it has, this process is killed at once.
    """
    if _LINUX and _forked_by_main_thread():
        _set_pdeathsig(signal.SIGKILL)
    if not descends_from(parent):
        _die()
    threading.Thread(target=_watch_parent, args=(parent, poll), name="imgembed-parent-watch",
                     daemon=True).start()


def worker_init_fn() -> "functools.partial[None]":
    """A DataLoader ``worker_init_fn`` (picklable under any start method) tying each of its
    workers to this process, the one that makes the loader."""
    return functools.partial(_tie_worker, os.getpid())


def _tie_worker(parent: int, worker_id: int) -> None:
    tie_to_parent(parent)


def descends_from(ancestor: int) -> bool:
    """Whether ``ancestor`` is this process's parent, or (on Linux) any process further up."""
    pid = os.getppid()
    if pid == ancestor:
        return True
    seen = 0
    while _LINUX and pid > 1 and seen < 64:
        pid, seen = _ppid_of(pid), seen + 1
        if pid == ancestor:
            return True
    return False


def _watch_parent(parent: int, poll: float) -> None:
    while descends_from(parent):
        time.sleep(poll)
    _die()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _ppid_of(pid: int) -> int:
    """``pid``'s parent from /proc, 0 if it has gone."""
    try:
        return _stat(pid)[0]
    except OSError:
        return 0


def _forked_by_main_thread() -> bool:
    """Whether the thread that forked this process is its parent's main thread (Linux only)."""
    ppid = os.getppid()
    try:
        children = Path(f"/proc/{ppid}/task/{ppid}/children").read_bytes().split()
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: the parent watch alone
        return False
    return str(os.getpid()).encode() in children


def _set_pdeathsig(sig: int) -> bool:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc, or no prctl in it: the parent watch alone
        return False


class Reaper:
    """A watchdog process that SIGKILLs this process's descendants once this process dies.

    The watchdog is a child of this process but not tied to it, in a session of its own (a
    Ctrl-C or hang-up in the terminal does not stop it first). Every :data:`POLL_S` seconds it
    notes the descendants of this process started since the watchdog itself (pid and start
    time, so a reused pid is never killed), and keeps each noted while it lives, re-parented or
    not; when its stdin, a pipe only this process writes, reaches EOF without the word to stop,
    or its parent pid changes, this process has died: it kills those it noted, and any children
    they have, and exits. A process started less than :data:`POLL_S` before the death can be
    missed (a Ray worker that young exits by itself once it finds the raylet gone). :meth:`close` stops the watchdog, killing
    nothing unless asked to. Linux only (it reads /proc); elsewhere it starts nothing.
    """

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        if not _LINUX:
            return
        # Run from the folder holding this package, so the watchdog imports this very copy.
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from imgembed.inference.lifetime import _reaper_main; _reaper_main(int(sys.argv[1]))",
             str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parent.parent), start_new_session=True)

    def close(self, *, reap: bool = False, timeout: float = 10.0) -> None:
        """Stop the watchdog: after an orderly shutdown of what was started, or with ``reap``
        (a start that failed half-way) once it has killed what it noted, as if this had died."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if not reap:
                proc.stdin.write(b"stop")
            proc.stdin.close()
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):  # it died, or hangs: it must not linger
            proc.kill()
            proc.wait()

    def __enter__(self) -> "Reaper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reaper_main(parent: int) -> None:
    """The watchdog's loop (see :class:`Reaper`)."""
    me = os.getpid()
    since = _stat(me)[2]
    noted: dict[int, int] = {}

    def note() -> None:
        # Keep what was noted while it lives: a dying parent loses its threads one by one, and
        # the children of the main thread are re-parented (and the raylet killed, its agents
        # orphaned) before the last thread closes the pipe or changes this process's parent.
        table = _process_table()
        for pid, start in list(noted.items()):
            if pid not in table or table[pid][1] == "Z" or table[pid][2] != start:
                del noted[pid]
        noted.update((pid, start) for pid, start in _descendants(parent, table).items()
                     if pid != me and start >= since)

    while os.getppid() == parent:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready:
            if os.read(sys.stdin.fileno(), 64):
                return  # told to stop
            break  # EOF: the parent died, or asks for the reaping now
        note()
    note()  # a parent still alive still has its descendants
    _reap(noted)


def _reap(noted: dict[int, int], *, rounds: int = 10) -> int:
    """SIGKILL the processes ``noted`` (pid -> start time) that still run, and their
    descendants, until none is left; how many were killed."""
    killed = 0
    for _ in range(rounds):
        table = _process_table()
        targets = {pid for pid, start in noted.items()
                   if pid in table and table[pid][2] == start and table[pid][1] != "Z"}
        targets |= {d for pid in targets for d in _descendants(pid, table)}
        targets.discard(os.getpid())
        if not targets:
            break
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.05)
    return killed


def _stat(pid: int) -> tuple[int, str, int]:
    """``(ppid, state, start time)`` of ``pid`` from /proc; OSError if it has gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()  # the name in parentheses may hold spaces
    return int(fields[1]), fields[0].decode(), int(fields[19])


def _process_table() -> dict[int, tuple[int, str, int]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                table[int(name)] = _stat(int(name))
    return table


def _descendants(root: int, table: dict[int, tuple[int, str, int]]) -> dict[int, int]:
    """pid -> start time of every living descendant of ``root`` in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, state, _) in table.items():
        if state != "Z":
            children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in out:
                out[pid] = table[pid][2]
                todo.append(pid)
    return out
