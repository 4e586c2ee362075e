"""One writer per index: an advisory ``fcntl`` lock on ``<index>/writer.lock``.

The kernel releases the lock when its holder dies, even by SIGKILL, so a crashed run never
leaves a stale lock. The file also records who holds it (PID, command, start time), so a
second writer can say whom it is waiting for. Readers take no lock: SQLite (WAL) gives them a
consistent snapshot and the FAISS file is replaced atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from ..errors import IndexLockedError

LOCK_FILE = "writer.lock"

# Lock descriptors this process holds. Forked children (decoding workers) close their copies at
# once: otherwise a worker that outlives a SIGKILLed writer would keep the flock for a while.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _describe(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"PID {info.get('pid', '?')} ({info.get('command', '?')}) since {since}"


class WriterLock:
    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    holder = _describe(read_holder(self.path) or {})
                    raise IndexLockedError(f"{self.path.parent} is being written by {holder}; wait for it to "
                                           "finish, or pass --wait to queue behind it") from None
                fcntl.flock(fd, fcntl.LOCK_EX)
            info = json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)[:300], "since": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_holder(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None


def writer_active(directory: str | Path) -> bool:
    """Whether some process holds the writer lock of ``directory`` right now."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
