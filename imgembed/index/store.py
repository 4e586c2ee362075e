"""SQLite metadata for an index: one row per image, skipped files, and a schema version.

The embedding vectors are stored here too, as float32 blobs: they are the source of truth from
which the FAISS file can always be rebuilt. Row ids are the FAISS ids. This module needs no torch.

It is the one module that speaks SQL (every query, and each schema migration), which is why it
runs past 400 lines: the rest of imgembed sees rows and record types, never a statement.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import IndexCorruptError, IndexVersionError

# The schema is versioned: version 1 is what the first release wrote, and each later change is
# a step function below that takes a database of version k to k + 1. A writer steps an older
# database up before its first write, one transaction a step (the change and the version it
# records commit together); a reader never writes, so it reads older versions as they are.
# Databases that earlier releases marked version 1 may already hold the phash column or the
# tombstone table (both were once added lazily, in place, without moving the version): each
# step makes its change only where it is missing.

# Version 1, as the first release created it.
_V1_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    root TEXT NOT NULL,
    path TEXT NOT NULL,          -- relative to root, '/'-separated
    label TEXT,                  -- parent folder relative to root; NULL at the root
    bytes INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    vector BLOB NOT NULL,        -- float32, little-endian, L2-normalised
    indexed_at REAL NOT NULL,
    UNIQUE (root, path)
)""",
    "CREATE INDEX IF NOT EXISTS images_hash ON images (hash)",
    """CREATE TABLE IF NOT EXISTS skipped (
    root TEXT NOT NULL,
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (root, path)
)""",
)
# Tombstones: rows of files that vanished keep their vectors for TOMBSTONE_DAYS, so a file that
# comes back (same bytes, any path, any root) is restored without being embedded again.
_TOMBSTONES = (
    """CREATE TABLE IF NOT EXISTS removed (
    hash TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    phash INTEGER,
    vector BLOB NOT NULL,
    root TEXT NOT NULL,          -- where it was, for the record
    path TEXT NOT NULL,
    removed_at REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS removed_hash ON removed (hash)",
)


# Search expansion (index/expansion.py): each image's nearest other images, and its vector
# augmented with theirs, derived from the vectors above and brought up to date by the writer.
_EXPANSION = (
    """CREATE TABLE IF NOT EXISTS neighbours (
    id INTEGER NOT NULL,         -- an image
    nb INTEGER NOT NULL,         -- one of its nearest other images
    sim REAL NOT NULL            -- their cosine
)""",
    "CREATE INDEX IF NOT EXISTS neighbours_id ON neighbours (id)",
    "CREATE INDEX IF NOT EXISTS neighbours_nb ON neighbours (nb)",
    "CREATE TABLE IF NOT EXISTS augmented (id INTEGER PRIMARY KEY, vector BLOB NOT NULL)",
)


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in db.execute(f"PRAGMA table_info({table})"))


def _has_table(db: sqlite3.Connection, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None


def _migrate_to_2(db: sqlite3.Connection) -> None:
    """Perceptual hashes: ``images.phash`` (images.perceptual_hash, a signed 64-bit integer);
    NULL in the rows embedded before, until their file changes."""
    if not _has_column(db, "images", "phash"):
        db.execute("ALTER TABLE images ADD COLUMN phash INTEGER")


def _migrate_to_3(db: sqlite3.Connection) -> None:
    """Tombstones: the ``removed`` table and its index on the content hash."""
    for statement in _TOMBSTONES:
        db.execute(statement)


def _migrate_to_4(db: sqlite3.Connection) -> None:
    """Search expansion: the ``neighbours`` and ``augmented`` tables, empty until an index with
    an expansion in its manifest is saved."""
    for statement in _EXPANSION:
        db.execute(statement)


# _STEPS[k - 1] takes a database of version k to version k + 1; append, never edit or reorder.
_STEPS = (_migrate_to_2, _migrate_to_3, _migrate_to_4)
SCHEMA_VERSION = 1 + len(_STEPS)
TOMBSTONE_DAYS = 30


def _serialised(method):
    """Hold the store's lock for the call: threads may share one store (the web app's), never
    its connection at the same moment."""
    @functools.wraps(method)
    def locked(self, *args, **kw):
        with self._lock:
            return method(self, *args, **kw)
    return locked


def _tombstone_cutoff() -> float:
    """Tombstones removed before this time (a time.time()) have expired."""
    return time.time() - TOMBSTONE_DAYS * 86400


@dataclass(frozen=True)
class ImageRow:
    id: int
    root: str
    path: str
    label: str | None
    bytes: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    phash: int | None = None

    @property
    def full_path(self) -> str:
        return str(Path(self.root) / self.path)


@dataclass(frozen=True)
class NewImage:
    """An image to insert; ``vector`` is a (dim,) float32 array."""

    root: str
    path: str
    label: str | None
    bytes: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    vector: np.ndarray
    phash: int | None = None


@dataclass(frozen=True)
class Known:
    """A stored vector for some content: a tombstone's (``tombstone`` is its rowid) or a live row's."""

    tombstone: int | None
    width: int
    height: int
    phash: int | None
    vector: np.ndarray


@dataclass(frozen=True)
class Skipped:
    root: str
    path: str
    reason: str
    bytes: int
    mtime_ns: int

    @property
    def full_path(self) -> str:
        return str(Path(self.root) / self.path)


_ROW_COLS = "id, root, path, label, bytes, mtime_ns, hash, width, height"  # + ", phash" where the column exists


def to_db(name: str | None):
    """File names that are not valid UTF-8 (Python holds their bytes as surrogates) are stored as
    BLOBs of the original bytes; SQLite columns accept either type."""
    if name is None:
        return None
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name)


def from_db(value):
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _row(r) -> ImageRow:
    return ImageRow(r[0], from_db(r[1]), from_db(r[2]), from_db(r[3]), *r[4:])


_MIX, _PRIME = 2654435761, 1_000_000_007


def id_summary(ids: np.ndarray) -> tuple[int, int, int]:
    """(count, sum, a second sum after multiplicative hashing) of a set of ids: two sets that
    differ (rows added or removed on one side only) give different summaries, and a reader that
    opens an index checks its FAISS file against SQLite in milliseconds whatever its size."""
    ids = np.asarray(ids, np.int64)
    return len(ids), int(ids.sum()), int(((ids * _MIX) % _PRIME).sum())


class MetadataStore:
    """A thin, typed layer over the SQLite file. Use as a context manager or call ``close``.

    Threads may share one store: each call holds its lock (``iter_vectors``, a generator, is for
    the single writer). ``version`` is the file's schema version; ``has_phash`` and
    ``has_tombstones`` say whether it has those yet (a file of an older version read as it is)."""

    def __init__(self, path: Path, *, create: bool = False):
        """Open the database at ``path`` (``create``: making it if missing, at the newest schema
        version). An older version is read as it is; the first write steps it up (:meth:`upgrade`)."""
        self.path = Path(path)
        self._lock = threading.RLock()
        if not create and not self.path.is_file():
            raise IndexCorruptError(f"{self.path}: metadata database is missing")
        try:
            # Shareable between threads, which the lock keeps from using it at the same time.
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        except sqlite3.DatabaseError as e:
            raise IndexCorruptError(f"{self.path}: cannot open the metadata database ({e})") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if create:
                self._transaction(self._create_v1)
            self.version = self._stored_version()
            self._read_schema()
            if create:
                self.upgrade()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise IndexCorruptError(f"{self.path}: damaged metadata database ({e})") from None
        except BaseException:
            self.db.close()
            raise

    def _create_v1(self) -> None:
        for statement in _V1_SCHEMA:
            self.db.execute(statement)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', '1')")

    def _transaction(self, work):
        """Run ``work()`` in one write transaction, taken at once (BEGIN IMMEDIATE: schema changes
        are not left to the sqlite3 module's implicit transactions, which do not cover them)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        return result

    def _stored_version(self) -> int:
        """The schema version recorded in ``meta``, refusing one this code does not know."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise IndexCorruptError(f"{self.path}: metadata database has no schema version")
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise IndexCorruptError(f"{self.path}: metadata database has an unreadable schema version "
                                    f"({row[0]!r})") from None
        if version > SCHEMA_VERSION:
            raise IndexVersionError(f"{self.path}: schema version {version} is newer than this imgembed "
                                    f"supports ({SCHEMA_VERSION}); upgrade imgembed")
        if version < 1:
            raise IndexCorruptError(f"{self.path}: metadata database has an unknown schema version ({version})")
        return version

    def _read_schema(self) -> None:
        """What the database holds, for the queries to adapt to: a reader of an older version
        (or of a version-1 file an earlier release extended in place) finds out here."""
        self.has_phash = _has_column(self.db, "images", "phash")
        self._row_cols = _ROW_COLS + (", phash" if self.has_phash else "")
        self.has_tombstones = _has_table(self.db, "removed")
        self.has_expansion = _has_table(self.db, "augmented")

    @_serialised
    def upgrade(self, target: int = SCHEMA_VERSION) -> int:
        """Step the database up to schema version ``target`` (the newest by default), one
        transaction a step; return the version it is at. Writers call this before writing."""
        if not 1 <= target <= SCHEMA_VERSION:
            raise ValueError(f"no schema version {target} (this imgembed knows 1 to {SCHEMA_VERSION})")
        try:
            while self.version < target:
                self.version = self._transaction(self._step)
            self._read_schema()
        except sqlite3.DatabaseError as e:
            raise IndexCorruptError(f"{self.path}: cannot upgrade the metadata database from schema version "
                                    f"{self.version} ({e})") from None
        return self.version

    def _writing(self) -> None:
        """Every write is made to the newest schema: an older database is stepped up first."""
        if self.version < SCHEMA_VERSION:
            self.upgrade()

    def _step(self) -> int:
        """One step, inside a transaction: read again under the write lock (another writer may
        have got there first)."""
        version = self._stored_version()
        if version == self.version:
            _STEPS[version - 1](self.db)
            version += 1
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        return version

    @_serialised
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "MetadataStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------

    @_serialised
    def relative_paths(self) -> list[tuple[int, str]]:
        """``(id, path relative to its root)`` of every image row, as stored."""
        return [(row_id, from_db(rel)) for row_id, rel in self.db.execute("SELECT id, path FROM images")]

    @_serialised
    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def _by_id(self, columns: str, ids: Iterable[int], table: str = "images") -> Iterator[tuple]:
        """Rows of ``SELECT columns FROM table`` (the first column being ``id``) for ``ids``, 500
        ids a query."""
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            yield from self.db.execute(f"SELECT {columns} FROM {table} WHERE id IN ({','.join('?' * len(chunk))})",
                                       chunk)

    @_serialised
    def rows_by_id(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        return {r[0]: _row(r) for r in self._by_id(self._row_cols, ids)}

    @_serialised
    def vectors_by_id(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The stored (d,) float32 vectors of ``ids`` that exist."""
        return {r[0]: np.frombuffer(r[1], dtype="<f4").astype(np.float32) for r in self._by_id("id, vector", ids)}

    @_serialised
    def augmented_by_id(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The augmented (d,) float32 vectors of ``ids`` that have one (search expansion)."""
        if not self.has_expansion:
            return {}
        return {r[0]: np.frombuffer(r[1], dtype="<f4").astype(np.float32)
                for r in self._by_id("id, vector", ids, "augmented")}

    @_serialised
    def expansion_state(self) -> tuple[int, int]:
        """(live images with an augmented vector, live images whose neighbour list names an image
        that is gone): what :meth:`expansion_todo` would bring up to date."""
        if not self.has_expansion:
            return 0, 0
        done = self.db.execute("SELECT COUNT(*) FROM augmented WHERE id IN (SELECT id FROM images)").fetchone()[0]
        return done, len(self._gone_neighbours())

    def _gone_neighbours(self) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT id FROM neighbours WHERE nb NOT IN (SELECT id FROM images) "
            "AND id IN (SELECT id FROM images)")]

    @_serialised
    def expansion_todo(self) -> tuple[list[int], list[int]]:
        """(live images without an augmented vector, live images whose neighbour list names an
        image that is gone), after forgetting the lists and vectors of images that are gone."""
        self._writing()
        with self.db:
            self.db.execute("DELETE FROM neighbours WHERE id NOT IN (SELECT id FROM images)")
            self.db.execute("DELETE FROM augmented WHERE id NOT IN (SELECT id FROM images)")
        fresh = [r[0] for r in self.db.execute(
            "SELECT id FROM images WHERE id NOT IN (SELECT id FROM augmented) ORDER BY id")]
        return fresh, self._gone_neighbours()

    @_serialised
    def neighbour_floor(self, ids: Iterable[int]) -> dict[int, tuple[int, float]]:
        """``id -> (neighbours listed, the lowest of their cosines)`` for the ``ids`` that have a list."""
        ids, out = [int(i) for i in ids], {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            out.update((r[0], (r[1], r[2])) for r in self.db.execute(
                f"SELECT id, COUNT(*), MIN(sim) FROM neighbours WHERE id IN ({','.join('?' * len(chunk))}) "
                "GROUP BY id", chunk))
        return out

    @_serialised
    def set_expansion(self, entries: Iterable[tuple[int, Sequence[int], Sequence[float], np.ndarray]]) -> None:
        """Replace, in one transaction, the neighbour list and augmented vector of each
        ``(id, neighbour ids, their cosines, augmented vector)``."""
        self._writing()
        entries = list(entries)
        with self.db:
            self.db.executemany("DELETE FROM neighbours WHERE id = ?", [(int(e[0]),) for e in entries])
            self.db.executemany("INSERT INTO neighbours VALUES (?, ?, ?)",
                                [(int(i), int(n), float(c)) for i, nbs, sims, _ in entries for n, c in zip(nbs, sims)])
            self.db.executemany("INSERT OR REPLACE INTO augmented VALUES (?, ?)",
                                [(int(i), np.ascontiguousarray(v, dtype="<f4").tobytes()) for i, _, _, v in entries])

    @_serialised
    def clear_expansion(self) -> None:
        """Forget every neighbour list and augmented vector (the expansion changed or was turned off)."""
        self._writing()
        with self.db:
            self.db.execute("DELETE FROM neighbours")
            self.db.execute("DELETE FROM augmented")

    @_serialised
    def rows_under(self, root: str) -> dict[str, ImageRow]:
        """Rows of one root, keyed by relative path."""
        q = f"SELECT {self._row_cols} FROM images WHERE root = ?"
        rows = (_row(r) for r in self.db.execute(q, (to_db(root),)))
        return {row.path: row for row in rows}

    def iter_vectors(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids (n,) int64, vectors (n, d) float32)`` in id order."""
        cur = self.db.execute("SELECT id, vector FROM images ORDER BY id")
        while rows := cur.fetchmany(batch):
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            yield ids, np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32)

    @_serialised
    def id_summary(self) -> tuple[int, int, int]:
        """:func:`id_summary` of the stored ids, computed by SQLite without loading them."""
        q = (f"SELECT COUNT(*), COALESCE(SUM(id), 0), COALESCE(SUM((id * {_MIX}) % {_PRIME}), 0) FROM images")
        n, total, mixed = self.db.execute(q).fetchone()
        return int(n), int(total), int(mixed)

    @_serialised
    def generation(self) -> int:
        """How many commits have changed the rows (0 in a file last written by an imgembed that
        did not count them). What is derived from the rows (a map, an audit) is current while
        this and :meth:`id_summary` are what they were when it was computed."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    @_serialised
    def ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.db.execute("SELECT id FROM images ORDER BY id")), np.int64)

    @_serialised
    def labels(self) -> dict[str | None, int]:
        q = "SELECT label, COUNT(*) FROM images GROUP BY label ORDER BY label"
        return {from_db(label): n for label, n in self.db.execute(q)}

    @_serialised
    def roots(self) -> list[str]:
        return [from_db(r[0]) for r in self.db.execute("SELECT DISTINCT root FROM images ORDER BY root")]

    @_serialised
    def content_sizes(self) -> set[int]:
        """Sizes in bytes of every stored content, live or tombstoned: only a file of such a size
        can have a vector already."""
        q = "SELECT DISTINCT bytes FROM images" + (" UNION SELECT bytes FROM removed" if self.has_tombstones else "")
        return {r[0] for r in self.db.execute(q)}

    @_serialised
    def page(self, offset: int, limit: int, *, label: str | None = None, root: str | None = None,
             folder: str = "") -> tuple[int, list[ImageRow]]:
        """(how many rows match, ``limit`` of them from ``offset``), in (root, path) order: the
        rows with ``label`` ("" for none), under ``root``, under its sub-folder ``folder``."""
        where, args = [], []
        if label is not None:
            where.append("label IS ?" if label == "" else "label = ?")
            args.append(None if label == "" else to_db(label))
        if root is not None:
            where.append("root = ?")
            args.append(to_db(root))
        if folder:
            prefix = folder.strip("/") + "/"
            where.append("substr(path, 1, ?) = ?")
            args += [len(prefix), prefix]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = self.db.execute(f"SELECT COUNT(*) FROM images{clause}", args).fetchone()[0]
        rows = self.db.execute(f"SELECT {self._row_cols} FROM images{clause} ORDER BY root, path LIMIT ? OFFSET ?",
                               [*args, int(limit), int(offset)])
        return total, [_row(r) for r in rows]

    @_serialised
    def folders(self) -> dict[tuple[str, str], int]:
        """Images per (root, top-level sub-folder) ("" for the root itself)."""
        out: dict[tuple[str, str], int] = {}
        for root, label, n in self.db.execute("SELECT root, label, COUNT(*) FROM images GROUP BY root, label"):
            key = (from_db(root), (from_db(label) or "").split("/")[0])
            out[key] = out.get(key, 0) + n
        return out

    @_serialised
    def row_at(self, root: str, path: str) -> ImageRow | None:
        r = self.db.execute(f"SELECT {self._row_cols} FROM images WHERE root = ? AND path = ?",
                            (to_db(root), to_db(path))).fetchone()
        return _row(r) if r else None

    @_serialised
    def same_content(self) -> list[list[ImageRow]]:
        """Rows that share their bytes (content hash and size) with another row, grouped."""
        q = (f"SELECT {self._row_cols} FROM images WHERE (hash, bytes) IN (SELECT hash, bytes FROM images "
             "WHERE hash != '' GROUP BY hash, bytes HAVING COUNT(*) > 1) ORDER BY hash, bytes, root, path")
        groups: dict[tuple[str, int], list[ImageRow]] = {}
        for r in self.db.execute(q):
            row = _row(r)
            groups.setdefault((row.hash, row.bytes), []).append(row)
        return list(groups.values())

    @_serialised
    def known(self, digest: str, size: int) -> Known | None:
        """A stored vector for this content: a tombstone first (restoring it; none older than
        TOMBSTONE_DAYS), else a live row."""
        if self.has_tombstones:
            r = self.db.execute("SELECT rowid, width, height, phash, vector FROM removed WHERE hash = ? AND bytes = ?"
                                " AND removed_at >= ? ORDER BY removed_at DESC LIMIT 1",
                                (digest, size, _tombstone_cutoff())).fetchone()
            if r:
                return Known(r[0], r[1], r[2], r[3], np.frombuffer(r[4], dtype="<f4").astype(np.float32))
        phash = "phash" if self.has_phash else "NULL"
        r = self.db.execute(f"SELECT width, height, {phash}, vector FROM images WHERE hash = ? AND bytes = ? LIMIT 1",
                            (digest, size)).fetchone()
        return Known(None, r[0], r[1], r[2], np.frombuffer(r[3], dtype="<f4").astype(np.float32)) if r else None

    @_serialised
    def tombstones(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM removed").fetchone()[0] if self.has_tombstones else 0

    @_serialised
    def drop_tombstones(self, *, expired_only: bool = False) -> int:
        """Forget all tombstones, or those older than TOMBSTONE_DAYS; return how many."""
        self._writing()
        with self.db:
            if not expired_only:
                return self.db.execute("DELETE FROM removed").rowcount
            return self.db.execute("DELETE FROM removed WHERE removed_at < ?", (_tombstone_cutoff(),)).rowcount

    @_serialised
    def skipped(self, root: str | None = None) -> list[Skipped]:
        if root is None:
            rows = self.db.execute("SELECT * FROM skipped ORDER BY root, path")
        else:
            rows = self.db.execute("SELECT * FROM skipped WHERE root = ? ORDER BY path", (to_db(root),))
        return [Skipped(from_db(r[0]), from_db(r[1]), *r[2:]) for r in rows]

    # -- writes ---------------------------------------------------------------------------

    @_serialised
    def commit(self, *, remove: Iterable[int] = (), add: Iterable[NewImage] = (),
               skipped: Iterable[Skipped] = (), moves: Iterable[tuple] = (), touches: Iterable[tuple] = (),
               vanish: Iterable[int] = (), restored: Iterable[int] = (),
               relocations: Iterable[tuple] = ()) -> list[int]:
        """Apply one chunk of changes in a single transaction; return the new rows' ids.

        ``moves`` ``(id, path, label, mtime_ns)`` change a row's path within its root,
        ``relocations`` ``(id, root, path, label, mtime_ns)`` move it to another root, ``touches``
        ``(id, mtime_ns)`` only its mtime: the vector stays in all three.

        A path that is added stops being "skipped"; a skipped path loses no other row here,
        so callers pass the ids of rows a skipped file replaces in ``remove``. Rows in ``vanish``
        are removed too, but leave tombstones; ``restored`` tombstones (rowids) were brought
        back by rows in ``add``. A chunk that changes any row adds one to :meth:`generation`.
        """
        self._writing()
        now = time.time()
        ids = []
        add, vanish = list(add), [(now, int(i)) for i in vanish]
        remove, moves, touches, restored, relocations = (list(x) for x in (remove, moves, touches, restored,
                                                                            relocations))
        changes = any((add, vanish, remove, moves, touches, relocations))
        with self.db:
            if changes:  # in the same transaction as the changes it counts
                self.db.execute("INSERT INTO meta VALUES ('generation', '1') ON CONFLICT (key) "
                                "DO UPDATE SET value = CAST(value AS INTEGER) + 1")
            self.db.executemany("INSERT INTO removed SELECT hash, bytes, width, height, "
                                "phash, vector, root, path, ? FROM images WHERE id = ?", vanish)
            self.db.executemany("DELETE FROM removed WHERE rowid = ?", [(int(i),) for i in restored])
            self.db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for _, i in vanish])
            self.db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in remove])
            self.db.executemany("UPDATE images SET path = ?, label = ?, mtime_ns = ? WHERE id = ?",
                                [(to_db(path), to_db(label), mtime, int(i)) for i, path, label, mtime in moves])
            self.db.executemany("UPDATE images SET root = ?, path = ?, label = ?, mtime_ns = ? WHERE id = ?",
                                [(to_db(root), to_db(path), to_db(label), mtime, int(i))
                                 for i, root, path, label, mtime in relocations])
            self.db.executemany("UPDATE images SET mtime_ns = ? WHERE id = ?", [(m, int(i)) for i, m in touches])
            for im in add:
                root, path = to_db(im.root), to_db(im.path)
                self.db.execute("DELETE FROM skipped WHERE root = ? AND path = ?", (root, path))
                cur = self.db.execute(
                    "INSERT INTO images (root, path, label, bytes, mtime_ns, hash, width, height, vector, indexed_at, phash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (root, path, to_db(im.label), im.bytes, im.mtime_ns, im.hash, im.width, im.height,
                     np.ascontiguousarray(im.vector, dtype="<f4").tobytes(), now, im.phash))
                ids.append(cur.lastrowid)
            self.db.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?, ?)",
                                [(to_db(s.root), to_db(s.path), s.reason, s.bytes, s.mtime_ns) for s in skipped])
        return ids

    @_serialised
    def ids_under(self, path: str) -> list[int]:
        """Ids of rows whose full path is ``path`` or lies under the folder ``path``."""
        path = path.rstrip("/")
        out = []
        for row_id, root, rel in self.db.execute("SELECT id, root, path FROM images"):
            full = f"{from_db(root).rstrip('/')}/{from_db(rel)}"
            if full == path or full.startswith(path + "/"):
                out.append(row_id)
        return out

    @_serialised
    def forget_skipped_under(self, path: str) -> int:
        path = path.rstrip("/")
        gone = [(r, p) for r, p in self.db.execute("SELECT root, path FROM skipped")
                if f"{from_db(r).rstrip('/')}/{from_db(p)}" == path
                or f"{from_db(r).rstrip('/')}/{from_db(p)}".startswith(path + "/")]
        self.forget(gone)
        return len(gone)

    @_serialised
    def forget(self, entries: Iterable[tuple[str, str]]) -> None:
        self._writing()
        with self.db:
            self.db.executemany("DELETE FROM skipped WHERE root = ? AND path = ?", list(entries))

    @_serialised
    def forget_skipped(self, root: str, paths: Iterable[str]) -> None:
        self._writing()
        with self.db:
            self.db.executemany("DELETE FROM skipped WHERE root = ? AND path = ?",
                                [(to_db(root), to_db(p)) for p in paths])
