"""Acting on duplicates: which copy to keep, what to do with the others, a journal that undoes it.

:func:`plan` turns duplicate groups into :class:`Action` records without touching a file: per
group one image is kept (:func:`choose_keeper`: a preferred folder first, then the largest
resolution, the largest file, the oldest file, the shortest path) and every other member is

- ``move``d to a folder, keeping its path relative to its root,
- ``link``ed: replaced by a hard link to the kept file (exact copies only: the bytes must be
  the same, so nothing is lost), or
- ``trash``ed: moved into ``.imgembed-trash/`` at the top of its root (hidden, so never indexed),
  never unlinked.

:class:`Journal` writes each action to a JSON-lines file and syncs it *before* the action runs,
and marks it done after; :func:`undo` reverses the done actions of a journal in reverse order
(and an action a crash left between the two lines, if it happened). Nothing here deletes a file:
a move is a rename (a copy, synced, then the unlink of the source, across file systems), a link
replaces a file whose bytes the kept file holds, and undoing a link writes those bytes back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..config import DEFAULT_KEEP, KEEP_RULES
from ..config import DUPLICATE_ACTIONS as ACTIONS
from ..errors import InputError
from ..imaging.files import atomic_path, content_hash

TRASH = ".imgembed-trash"
JOURNAL_VERSION = 1


@dataclass(frozen=True)
class Member:
    """One image of a duplicate group, as the index knows it."""

    id: int
    root: str
    path: str  # relative to root
    width: int
    height: int
    bytes: int
    mtime_ns: int
    hash: str

    @property
    def full_path(self) -> str:
        return str(Path(self.root) / self.path)

    @classmethod
    def of(cls, row) -> "Member":
        """From an index row (:class:`imgembed.index.store.ImageRow`)."""
        return cls(row.id, row.root, row.path, row.width, row.height, row.bytes, row.mtime_ns, row.hash)


@dataclass(frozen=True)
class Action:
    """What happens to one file: ``op`` ``src`` (-> ``dst``), ``keep`` being its group's keeper."""

    op: str
    src: str
    dst: str
    keep: str
    id: int
    root: str
    path: str
    bytes: int
    mtime_ns: int
    hash: str


def _rank(m: Member, keep: Sequence[str], prefer: Sequence[str]) -> tuple:
    preferred = next((i for i, folder in enumerate(prefer) if inside(m.full_path, folder)), len(prefer))
    key = [preferred]
    for rule in keep:
        key.append({"resolution": -m.width * m.height, "size": -m.bytes,
                    "oldest": m.mtime_ns, "newest": -m.mtime_ns}[rule])
    return (*key, len(m.full_path), m.full_path)


def choose_keeper(members: Sequence[Member], keep: Sequence[str] = DEFAULT_KEEP,
                  prefer: Sequence[str] = ()) -> Member:
    """The member to keep: one under the first ``prefer`` folder that holds any, then by the
    ``keep`` rules in order (``resolution``: most pixels, ``size``: largest file, ``oldest`` or
    ``newest`` file), then the shortest path."""
    for rule in keep:
        if rule not in KEEP_RULES:
            raise InputError(f"--keep: {rule!r} is not one of {', '.join(KEEP_RULES)}")
    return min(members, key=lambda m: _rank(m, keep, [os.path.abspath(p) for p in prefer]))


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both absolute, as strings)."""
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def plan(groups: Iterable[tuple[Sequence[Member], bool]], op: str, *, move_to: str | Path | None = None,
         keep: Sequence[str] = DEFAULT_KEEP, prefer: Sequence[str] = ()) -> list[tuple[Member, list[Action]]]:
    """For each ``(members, exact)`` group, its keeper and the actions on the others.

    ``exact`` says the members share their bytes (same content hash); ``link`` needs it.
    """
    if op not in ACTIONS:
        raise InputError(f"action must be one of {', '.join(ACTIONS)}, not {op!r}")
    if op == "move" and move_to is None:
        raise InputError("moving duplicates needs a folder: --move-to DIR")
    target = Path(os.path.abspath(move_to)) if move_to is not None else None
    out = []
    for members, exact in groups:
        if op == "link" and not exact:
            raise InputError("--link replaces files by hard links to the kept copy, which would lose the "
                             "content of near-duplicates; use it with --exact, or --trash or --move-to")
        keeper = choose_keeper(members, keep, prefer)
        actions = []
        for m in members:
            if m.id == keeper.id:
                continue
            if op == "move":
                dst = str(target / m.path)
            elif op == "trash":
                dst = str(Path(m.root) / TRASH / m.path)
            else:
                dst = keeper.full_path
            actions.append(Action(op, m.full_path, dst, keeper.full_path, m.id, m.root, m.path, m.bytes,
                                  m.mtime_ns, m.hash))
        out.append((keeper, actions))
    return out


class ActionError(Exception):
    """One action could not be carried out safely; the file was left as it was."""


def check(action: Action, roots: Sequence[str]) -> None:
    """Refuse an action that could lose data or reach outside the index: its file must be a
    regular file (no symlink) inside its root and one of the index's roots, unchanged since it
    was indexed; the kept copy must exist (and, for a link, hold the same bytes); the
    destination must not exist (a link replaces its source, so it names the keeper)."""
    src = Path(action.src)
    root = os.path.realpath(action.root)
    if not any(inside(root, os.path.realpath(r)) for r in roots):
        raise ActionError(f"{src}: outside the index's folders")
    if src.is_symlink() or not src.is_file():
        raise ActionError(f"{src}: not a regular file (gone, or a link)")
    if not inside(os.path.realpath(src), root):
        raise ActionError(f"{src}: resolves outside its folder {action.root}")
    st = src.stat()
    if (st.st_size, st.st_mtime_ns) != (action.bytes, action.mtime_ns):
        raise ActionError(f"{src}: changed since it was indexed; run imgembed index first")
    keep = Path(action.keep)
    if not keep.is_file() or os.path.realpath(keep) == os.path.realpath(src):
        raise ActionError(f"{src}: its kept copy {keep} is missing; nothing done (the last copy is never touched)")
    if action.op == "link":
        if os.path.samefile(keep, src):
            raise ActionError(f"{src}: already a hard link to {keep}")
        if content_hash(keep.read_bytes()) != action.hash or content_hash(src.read_bytes()) != action.hash:
            raise ActionError(f"{src}: its bytes differ from {keep}'s now; not linked")
    elif os.path.lexists(action.dst):
        raise ActionError(f"{src}: destination {action.dst} already exists")


def perform(action: Action) -> None:
    """Carry out a checked action."""
    src, dst = Path(action.src), Path(action.dst)
    if action.op == "link":
        tmp = src.with_name(f".{src.name}.imgembed-link")
        tmp.unlink(missing_ok=True)
        os.link(action.keep, tmp)
        os.replace(tmp, src)
        return
    _move(src, dst)


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != 18:  # EXDEV: another file system, copy then remove
            raise
        with atomic_path(dst) as tmp:
            shutil.copy2(src, tmp)
        src.unlink()


def reverse(action: Action) -> None:
    """Undo a performed action: move the file back, or give a linked path its own bytes again
    (those of the kept copy, which were its bytes) with its old mtime."""
    src, dst = Path(action.src), Path(action.dst)
    if action.op == "link":
        if not src.exists():
            raise ActionError(f"{src}: gone since it was linked; nothing to undo")
        with atomic_path(src) as tmp:
            shutil.copyfile(src, tmp)  # src is the link: same bytes, a new inode
            os.utime(tmp, ns=(action.mtime_ns, action.mtime_ns))
        return
    if os.path.lexists(src):
        raise ActionError(f"{src}: a file is there again; {dst} was left where it is")
    if not dst.exists():
        raise ActionError(f"{dst}: gone since it was moved there; nothing to undo")
    _move(dst, src)
    _prune_empty(dst.parent, stop=Path(action.root) / TRASH if action.op == "trash" else dst.parent)


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove folders an undo emptied, up to and including the trash folder."""
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == stop or stop not in folder.parents:
            return
        folder = folder.parent


def done_moving(action: Action) -> bool:
    """For an action a crash left unmarked: whether it happened."""
    if action.op == "link":
        return os.path.exists(action.src) and os.path.samefile(action.src, action.keep)
    return not os.path.lexists(action.src) and os.path.exists(action.dst)


class Journal:
    """A JSON-lines file: a header, then ``{"action": ...}`` before each action and
    ``{"done": n}`` after it; :func:`undo` appends ``{"undone": n}``. Each line is synced before
    the file operation it announces."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = None
        self._count = 0

    @classmethod
    def create(cls, folder: Path, header: dict) -> "Journal":
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        for n in range(1000):  # two runs in one second of one process (the web app) get their own
            journal = cls(folder / f"{stamp}-{os.getpid()}{f'-{n}' if n else ''}.jsonl")
            try:
                journal._f = open(journal.path, "x", encoding="utf-8")
                break
            except FileExistsError:
                continue
        else:
            raise InputError(f"{folder}: cannot name a new journal (1000 runs this second); try again")
        journal._write({"journal": "imgembed-duplicates", "version": JOURNAL_VERSION, **header})
        return journal

    def _write(self, record: dict) -> None:
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def announce(self, action: Action) -> int:
        self._count += 1
        self._write({"n": self._count, "action": asdict(action)})
        return self._count

    def done(self, n: int) -> None:
        self._write({"done": n})

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_journal(path: Path) -> tuple[dict, list[tuple[int, Action, str]]]:
    """(header, [(n, action, state)]) with state ``done``, ``undone`` or ``announced``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable duplicates journal ({e})") from None
    if not records or records[0].get("journal") != "imgembed-duplicates":
        raise InputError(f"{path}: not an imgembed duplicates journal")
    if records[0].get("version", 0) > JOURNAL_VERSION:
        raise InputError(f"{path}: journal version {records[0].get('version')} is newer than this imgembed; upgrade it")
    actions: dict[int, list] = {}
    for r in records[1:]:
        if "action" in r:
            actions[r["n"]] = [Action(**r["action"]), "announced"]
        elif "done" in r and r["done"] in actions:
            actions[r["done"]][1] = "done"
        elif "undone" in r and r["undone"] in actions:
            actions[r["undone"]][1] = "undone"
    return records[0], [(n, a, state) for n, (a, state) in sorted(actions.items())]


def append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
