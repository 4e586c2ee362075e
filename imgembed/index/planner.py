"""What an ``index`` run must do for one root, decided before anything is embedded or written.

:func:`plan` is pure: it takes the files a walk found (:class:`FileStat`, from :func:`scan`), the
rows and skipped entries stored for the root, and two look-ups (a file's content hash, and the
vector the index already holds for some content), and returns a :class:`Plan` of named records:
which files to embed, which rows they replace, which files only moved or were touched, which come
back with bytes the index already has a vector for, and which rows vanished. :func:`check_removals`
refuses a plan that would empty a root by accident. Nothing here reads an image or needs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator

from ..errors import RemovalRefusedError
from ..imaging.files import content_hash, walk_images
from .store import ImageRow, Known, Skipped

# A run may remove at most this share of a root's rows, or fewer than REMOVAL_GUARD_MIN of them,
# without allow_removal (see check_removals).
REMOVAL_GUARD_SHARE = 0.5
REMOVAL_GUARD_MIN = 50


@dataclass(frozen=True)
class FileStat:
    """A file found under a root: its path, its path relative to the root (``/``-separated), and
    its size and mtime, or why it could not be stat'ed."""

    path: str
    relative: str
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Move:
    """A stored row whose bytes now sit at another path: only its metadata changes."""

    id: int
    relative: str
    label: str | None
    mtime_ns: int


@dataclass(frozen=True)
class Touch:
    """A stored row whose file has a new mtime but the same bytes."""

    id: int
    mtime_ns: int


@dataclass(frozen=True)
class Restore:
    """A new or changed file whose bytes the index already holds a vector for (a tombstone's or
    another row's): it gets that vector without being embedded."""

    file: FileStat
    digest: str
    known: Known


@dataclass
class Plan:
    todo: list[FileStat] = field(default_factory=list)  # to embed
    replaces: dict[str, int] = field(default_factory=dict)  # relative path -> id of the row it replaces
    gone: list[int] = field(default_factory=list)  # ids of rows whose files disappeared (when pruning)
    moves: list[Move] = field(default_factory=list)
    touches: list[Touch] = field(default_factory=list)
    restores: list[Restore] = field(default_factory=list)
    unchanged: int = 0
    still_bad: list[Skipped] = field(default_factory=list)  # known failures, file unchanged
    unstatable: list[Skipped] = field(default_factory=list)
    vanished_bad: list[str] = field(default_factory=list)  # skipped entries whose files disappeared
    indexed: int = 0  # rows under the root before this run


def label_of(relative: str) -> str | None:
    """An image's label: its parent folder relative to the root (None directly in the root)."""
    parent = relative.rpartition("/")[0]
    return parent or None


def scan(root: Path) -> Iterator[FileStat]:
    """The images under ``root`` (see :func:`imgembed.imaging.files.walk_images`), stat'ed."""
    for path, rel, entry in walk_images(str(root)):
        try:
            st = entry.stat()
        except OSError as e:
            yield FileStat(path, rel, error=f"cannot stat file: {e.strerror or e}")
            continue
        yield FileStat(path, rel, st.st_size, st.st_mtime_ns)


def file_hash(f: FileStat) -> str | None:
    """The content hash of a file, None if it cannot be read (it is then embedded, and fails there)."""
    try:
        return content_hash(Path(f.path).read_bytes())
    except OSError:
        return None


def plan(root: str, files: Iterable[FileStat], existing: dict[str, ImageRow], known_bad: dict[str, Skipped], *,
         prune: bool = True, hash_of: Callable[[FileStat], str | None] = file_hash,
         known: Callable[[str, int], Known | None] = lambda digest, size: None,
         stored_sizes: Callable[[], Collection[int]] = frozenset) -> Plan:
    """Decide a run for ``root`` (its absolute path, as stored).

    ``existing`` and ``known_bad`` are the root's stored rows and skipped entries by relative
    path; ``known(digest, size)`` is the vector the index holds for some content, if any, and
    ``stored_sizes()`` the sizes of all stored content (asked only when some file needs embedding;
    only files of such a size are hashed to look it up). Files whose size and mtime match their row are unchanged and never read.
    """
    out, seen = Plan(indexed=len(existing)), set()
    for f in files:
        seen.add(f.relative)
        if f.error is not None:
            out.unstatable.append(Skipped(root, f.relative, f.error, 0, 0))
            continue
        row, bad = existing.get(f.relative), known_bad.get(f.relative)
        if row is not None and (row.bytes, row.mtime_ns) == (f.size, f.mtime_ns):
            out.unchanged += 1
        elif bad is not None and (bad.bytes, bad.mtime_ns) == (f.size, f.mtime_ns):
            out.still_bad.append(bad)
        else:
            if row is not None:
                out.replaces[f.relative] = row.id
            out.todo.append(f)
    gone = {rel: row for rel, row in existing.items() if rel not in seen}
    _confirm_by_hash(out, existing, gone, hash_of)
    _restore_by_hash(out, hash_of, known, stored_sizes)
    if prune:
        out.gone = [row.id for row in gone.values()]
    out.vanished_bad = [p for p in known_bad if p not in seen]
    return out


def _confirm_by_hash(out: Plan, existing: dict[str, ImageRow], gone: dict[str, ImageRow], hash_of) -> None:
    """Take out of ``out.todo`` what needs no embedding: files whose mtime changed but whose bytes
    did not (touched), and new paths holding the bytes of a vanished row (moved or renamed); such
    rows leave ``gone``. Only files that may match are read, and reading is far cheaper than
    decoding."""
    by_content: dict[tuple[str, int], list[ImageRow]] = {}
    for row in gone.values():
        by_content.setdefault((row.hash, row.bytes), []).append(row)
    gone_sizes = {size for _, size in by_content}  # only a file of such a size can be a moved one
    todo = []
    for f in out.todo:
        row = existing.get(f.relative)
        if row is not None and row.bytes == f.size and hash_of(f) == row.hash:
            out.touches.append(Touch(row.id, f.mtime_ns))
            out.replaces.pop(f.relative, None)
            continue
        if row is None and f.size in gone_sizes:
            matches = by_content.get((hash_of(f), f.size))
            if matches:
                old = matches.pop()
                gone.pop(old.path)
                out.moves.append(Move(old.id, f.relative, label_of(f.relative), f.mtime_ns))
                continue
        todo.append(f)
    out.todo = todo


def _restore_by_hash(out: Plan, hash_of, known, stored_sizes) -> None:
    """Take out of ``out.todo`` the files whose bytes the index already holds a vector for: a
    tombstone (a file that vanished, from this root or another, and came back) or a live row
    (the same file under another root, or a copy). Only files of a stored size are read."""
    if not out.todo:
        return
    sizes = stored_sizes()
    taken: dict[tuple[str, int], Known] = {}
    todo = []
    for f in out.todo:
        digest = hash_of(f) if f.size in sizes else None
        found = None
        if digest is not None:
            key = (digest, f.size)
            if key in taken:  # a second copy of restored bytes: reuse the vector, the tombstone is taken
                found = replace(taken[key], tombstone=None)
            else:
                found = taken[key] = known(digest, f.size)
        if found is None:
            todo.append(f)
        else:
            out.restores.append(Restore(f, digest, found))
    out.todo = todo


def check_removals(root: Path | str, p: Plan) -> None:
    """Refuse, before anything changes, a plan that would remove every row of a root, or more
    than half of them and at least ``REMOVAL_GUARD_MIN``: an unmounted drive or a wrong path
    leaves an empty folder, a half-finished copy a half-empty one, and either would throw away
    hours of embedding. Ordinary deletions (a few files, or most of a small folder) pass."""
    gone, total = len(p.gone), p.indexed
    if not gone or not (gone == total or (gone > REMOVAL_GUARD_SHARE * total and gone >= REMOVAL_GUARD_MIN)):
        return
    found = "is empty" if gone == total and not (p.todo or p.unchanged or p.moves or p.touches or p.restores) \
        else f"lacks {gone} of its {total} indexed images"
    raise RemovalRefusedError(
        f"{root} {found}; refusing to remove {gone} of {total} images from the index (is a drive unmounted "
        "or the path wrong?); nothing was changed: check the folder, or pass --allow-removal to remove "
        "them (--no-prune keeps them)")
