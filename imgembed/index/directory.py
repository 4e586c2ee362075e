"""An index directory: ``manifest.json`` + ``metadata.sqlite`` + ``vectors.faiss``.

:class:`ImageIndex` ties the three together. The manifest (:mod:`.manifest`) says what the
directory is and which model made the vectors; SQLite (:mod:`.store`) holds one row per image
with its vector and is the source of truth; the FAISS file is derived from those vectors and held
by a backend (:mod:`.backends`: in RAM, or lists on disk). Writers that find the FAISS file out of
step with SQLite (a run interrupted between its SQLite commits and its final FAISS save) rebuild
it from SQLite; readers then search a copy rebuilt in memory and say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import IndexCorruptError, IndexNotFoundError
from . import backends, expansion, recall, vectors
from .expansion import DEFAULT as DEFAULT_EXPANSION
from .expansion import Expansion
from .lock import WriterLock, writer_active
from .manifest import DATABASE, FAISS_FILE, MANIFEST, check_model, new, now, read_manifest, spec_of, write_json_atomic
from .store import ImageRow, MetadataStore, NewImage, Skipped, id_summary


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # the cosine similarity of the image's embedding with the query's (1: identical)
    row: ImageRow
    source: int = 0  # which of several indexes searched as one holds it (api.Searcher)
    key: float | None = None  # what ranked it, where not the score (an expanded ranking: expansion.order)

    @property
    def rank_key(self) -> float:
        return self.score if self.key is None else self.key


class ImageIndex:
    """An open index. Open with :meth:`open` (read) or :meth:`open_for_write`; close when done."""

    def __init__(self, directory: Path, manifest: dict, store: MetadataStore, vecs: backends.Backend,
                 lock: WriterLock | None = None, problem: str | None = None):
        self.directory = directory
        self.manifest = manifest
        self.store = store
        self.vectors = vecs
        self.lock = lock
        # Set when a reader found the FAISS file out of step with SQLite and no writer running
        # (a crashed run): it then searches a copy rebuilt in memory (or caught up, for ondisk),
        # and says so here.
        self.problem = problem
        self._rebuilt = False  # since opening: the next save() checks recall again

    @property
    def faiss(self):
        """The FAISS index of the published file (for an ondisk index, without the lists added
        since opening)."""
        return self.vectors.faiss

    @property
    def path(self) -> Path:
        return self.directory / FAISS_FILE

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | Path, model_identity: dict | None = None) -> "ImageIndex":
        """Open for reading, refusing a mismatched model or an unreadable file.

        While a writer runs, the FAISS file may lag behind SQLite: searches see what it last
        published, and skip rows deleted since. With no writer running, a FAISS file out of step
        with SQLite (left by a killed run) is rebuilt in memory from the stored vectors and
        :attr:`problem` says so; ``imgembed check --repair`` fixes the file. An ``ondisk`` index
        is not rebuilt (it may exceed this machine's RAM): the rows its file lacks are added to
        lists in RAM, and the rows it has in excess are skipped.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        check_model(directory, manifest, model_identity)
        store = MetadataStore(directory / DATABASE)
        try:
            vecs = backends.open_vectors(directory / FAISS_FILE, spec_of(manifest), reader=True)
            problem = _consistency_problem(manifest, store, vecs.faiss)
            if problem and not writer_active(directory):
                problem = f"{directory / FAISS_FILE}: {problem}"
                if isinstance(vecs, backends.OndiskVectors) and vecs.faiss.d == int(manifest["model"]["dim"]):
                    vecs.catch_up(store)
                else:
                    vecs = backends.build(spec_of(manifest), int(manifest["model"]["dim"]), store)
            else:
                problem = None
        except BaseException:
            store.close()
            raise
        return cls(directory, manifest, store, vecs, problem=problem)

    @classmethod
    def open_for_write(cls, directory: str | Path, model_identity: dict | None, model_source: dict | None = None,
                       index_type: str | None = None, *, wait: bool = False,
                       target_recall: float | None = None,
                       expansion: Expansion | None = None) -> "ImageIndex":
        """Open or create, holding the writer lock (:class:`IndexLockedError` if another process
        holds it, unless ``wait``). A missing or out-of-step FAISS file is rebuilt from SQLite.

        ``index_type`` (see :mod:`imgembed.index.vectors`) applies from the next :meth:`save`;
        None keeps the index's own (``auto`` for a new one). So does ``target_recall``, the
        Recall@10 an approximate index is tuned to reach (see :mod:`imgembed.index.recall`; None
        keeps the index's own, 0.95 for a new one). So does ``expansion``, how searches rank
        (:meth:`set_expansion`; None keeps the index's own: :data:`~.expansion.DEFAULT` for a new
        one, none for a new ``ondisk`` one).
        """
        directory = Path(directory)
        if model_identity is None and not (directory / MANIFEST).exists():
            raise IndexNotFoundError(f"no imgembed index in {directory} ({MANIFEST} missing); "
                                     f"build one with: imgembed index FOLDER --index {directory}")
        lock = WriterLock(directory).acquire(wait)
        try:
            index = cls._open_locked(directory, model_identity, model_source, index_type, lock)
        except BaseException:
            lock.release()
            raise
        if target_recall is not None and target_recall != index.target_recall:
            index.manifest["target_recall"] = target_recall
            index.manifest.pop("recall", None)  # measured for another target: measure again
        if expansion is not None:
            index.set_expansion(expansion)
        return index

    @property
    def target_recall(self) -> float:
        return float(self.manifest.get("target_recall", recall.DEFAULT_TARGET))

    @property
    def recall_check(self) -> recall.RecallCheck | None:
        """The last Recall@10 measurement of an approximate index (None for an exact one)."""
        return recall.RecallCheck.from_dict(self.manifest.get("recall"))

    @classmethod
    def _open_locked(cls, directory: Path, model_identity, model_source, index_type, lock) -> "ImageIndex":
        if (directory / MANIFEST).exists():
            manifest = read_manifest(directory)
            check_model(directory, manifest, model_identity)
            store = MetadataStore(directory / DATABASE)
            try:
                store.upgrade()  # the writer brings an older schema up to date (index/store.py)
            except BaseException:
                store.close()
                raise
        else:
            directory.mkdir(parents=True, exist_ok=True)
            spec = vectors.choose(index_type or "auto", 0, int(model_identity["dim"]))
            manifest = new(model_identity, model_source, spec)
            if not spec.index_type.startswith("ondisk"):  # beyond RAM, lists would cost a search an image
                manifest["expansion"] = DEFAULT_EXPANSION.to_dict()
            store = MetadataStore(directory / DATABASE, create=True)
        try:
            try:
                vecs = backends.open_vectors(directory / FAISS_FILE, spec_of(manifest), reader=False)
                stale = _consistency_problem(manifest, store, vecs.faiss) is not None
            except IndexCorruptError:
                stale = True
            if stale:
                vecs = backends.build(spec_of(manifest), int(manifest["model"]["dim"]), store, directory / FAISS_FILE)
        except BaseException:
            store.close()
            raise
        index = cls(directory, manifest, store, vecs, lock=lock)
        if index_type is not None and index_type != spec_of(manifest).index_type:
            index.manifest["faiss"] = {**manifest["faiss"], "index_type": index_type}
        if stale:
            index.save()
        return index

    def close(self) -> None:
        self.store.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> "ImageIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dim"])

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def expansion(self) -> Expansion:
        """How :meth:`search` ranks with ``expand``: the manifest's choice (none for indexes
        made before there was one)."""
        return Expansion.from_dict(self.manifest.get("expansion"))

    def search(self, queries: np.ndarray, k: int, *,
               expansion: Expansion | None = None) -> list[list[Hit]]:
        """For each row of ``queries`` (q, dim), up to ``k`` hits, best first.

        An ``ondisk`` index stores 8-bit codes, whose scores are approximate: its best
        candidates are re-scored exactly with the vectors stored in SQLite, so ranks and scores
        are those of the real vectors (:class:`~imgembed.index.backends.OndiskVectors`).
        With an active ``expansion`` (usually :attr:`expansion`, the index's own), it ranks the
        raw search's best :data:`~.expansion.SHORTLIST` candidates (:mod:`.expansion`); scores
        stay the cosines, and :attr:`Hit.key` holds the ranking's key.
        """
        if expansion is not None and expansion.active and len(self):
            return [self._expanded(q, k, expansion) for q in np.asarray(queries, np.float32)]
        scores, ids = self.vectors.search(queries, k + self.vectors.stale, self.store)  # stale ids are skipped
        rows = self.store.rows_by_id(i for i in ids.ravel() if i >= 0)
        return [[Hit(rank, float(s), rows[int(i)]) for rank, (s, i) in enumerate(
                    [(s, i) for s, i in zip(srow, irow) if i >= 0 and int(i) in rows][:k], start=1)]
                for srow, irow in zip(scores, ids)]

    def _expanded(self, query: np.ndarray, k: int, e: Expansion) -> list[Hit]:
        found = expansion.search(self.vectors, self.store, query, k, e, augmented=self.expansion.k > 0)
        rows = self.store.rows_by_id(i for i, _, _ in found)
        return [Hit(rank, cosine, rows[i], key=key) for rank, (i, cosine, key) in enumerate(found, start=1)
                if i in rows]

    # -- writing -------------------------------------------------------------------------

    def commit(self, *, remove=(), add: list[NewImage] = (), skipped: list[Skipped] = (), moves=(),
               touches=(), vanish=(), restored=(), relocations=()) -> list[int]:
        """Apply a chunk to SQLite (one transaction), then to the vectors in memory.

        ``moves`` ``(id, path, label, mtime_ns)``, ``relocations`` ``(id, root, path, label,
        mtime_ns)`` and ``touches`` ``(id, mtime_ns)`` change only metadata: the vectors stay. ``vanish`` removes rows but keeps tombstones of them, and
        ``restored`` names the tombstones that rows in ``add`` bring back
        (:meth:`MetadataStore.commit`).
        """
        remove, vanish = list(remove), list(vanish)
        ids = self.store.commit(remove=remove, add=add, skipped=skipped, moves=moves, touches=touches,
                                vanish=vanish, restored=restored, relocations=relocations)
        if remove or vanish:
            self.vectors.remove(remove + vanish)
        if add:
            self.vectors.add(np.asarray(ids, np.int64), np.stack([a.vector for a in add]))
        return ids

    def rebuild(self, index_type: str | None = None) -> vectors.IndexSpec:
        """Rebuild the FAISS index from the stored vectors, as ``index_type`` (default: its own)."""
        spec = vectors.choose(index_type or spec_of(self.manifest).index_type, self.store.count(), self.dim)
        self.manifest["faiss"] = spec.to_dict()
        self.vectors = backends.build(spec, self.dim, self.store, self.path)
        self._rebuilt = True
        return spec

    def save(self) -> None:
        """Publish the FAISS file, then the manifest, each atomically.

        First rebuilds the FAISS index when it holds removed rows, or when its type calls for
        another structure at the current size (``auto`` growing from flat to hnsw to ivfpq,
        ``ondisk`` growing its number of lists; an IVF index built by an earlier version keeps its
        codec until then, :func:`vectors.calls_for_rebuild`), or when it is the flat stand-in of a
        type that had no vectors to train on when it was made. An ``ondisk`` index is rebuilt straight into a
        new ``.ivfdata`` generation, or gets the vectors added since it was opened merged into
        one (:func:`vectors.save_ondisk`).
        """
        current = spec_of(self.manifest)
        wanted = vectors.choose(current.index_type, self.store.count(), self.dim)
        if (self.vectors.stale or vectors.calls_for_rebuild(current, wanted)
                or (len(self) and vectors.is_stand_in(self.faiss, current.factory))):
            self.rebuild()
        self.vectors = self.vectors.publish(self.path, spec_of(self.manifest).params)
        self._check_recall()
        self.refresh_expansion()
        labels = self.store.labels()
        self.manifest.update({
            "updated_at": now(), "imgembed_version": __version__,
            "counts": {"images": len(self), "skipped": len(self.store.skipped()),
                       "labels": sum(1 for label in labels if label is not None)},
            "roots": self.store.roots(),
        })
        write_json_atomic(self.directory / MANIFEST, self.manifest)

    def set_expansion(self, wanted: Expansion) -> None:
        """Search with ``wanted`` from the next :meth:`save` on (:data:`~.expansion.NONE`: raw).
        Stored neighbour lists and augmented vectors are kept while the augmentation (``k``,
        ``alpha``) stays the same, and forgotten otherwise."""
        current = self.expansion
        if (wanted.k, wanted.alpha) != (current.k, current.alpha):
            self.store.clear_expansion()
        if wanted.active:
            self.manifest["expansion"] = wanted.to_dict()
        else:
            self.manifest.pop("expansion", None)

    def refresh_expansion(self, progress=None) -> int:
        """Bring the neighbour lists and augmented vectors up to date with the images
        (:func:`expansion.refresh`); returns how many lists were made."""
        e = self.expansion
        if not e.k or not len(self):
            return 0
        exact = not recall.tunable(spec_of(self.manifest).factory)
        return expansion.refresh(self.vectors, self.store, e, self.dim, exact=exact, progress=progress)

    def _check_recall(self) -> None:
        """Measure an approximate index's Recall@10 on its own vectors and tune its search
        parameters to the target (:func:`recall.tune`), when it was rebuilt, has doubled in size
        or the target changed since it was last measured; an exact index has no recall to check."""
        spec, n = spec_of(self.manifest), len(self)
        if not recall.tunable(spec.factory) or n <= recall.K + 1:
            self.manifest.pop("recall", None)
            return
        last = self.recall_check
        if last is not None and not self._rebuilt and last.target == self.target_recall and 2 * last.n > n:
            return
        if not self.vectors.settled:
            return
        ids = self.store.ids()
        sample = np.sort(np.random.default_rng(0).choice(ids, min(recall.SAMPLE, len(ids)), replace=False))
        stored = self.store.vectors_by_id(sample)
        queries, query_ids = recall.check_queries(self.faiss, np.stack([stored[int(i)] for i in sample]), sample)
        truth, exact_ms = recall.exact_neighbours(queries, query_ids, self.store.iter_vectors())
        check = recall.tune(self.faiss, spec.factory, queries, query_ids, truth, exact_ms, n,
                            target=self.target_recall, depth=self.vectors.candidates(recall.K))
        self.manifest["faiss"] = {**self.manifest["faiss"], "params": check.params}
        self.manifest["recall"] = check.to_dict()
        self._rebuilt = False


def _consistency_problem(manifest: dict, store: MetadataStore, faiss_index) -> str | None:
    dim = int(manifest["model"]["dim"])
    if faiss_index.d != dim:
        return f"vectors have dimension {faiss_index.d}, manifest says {dim}"
    n_rows = store.count()
    if faiss_index.ntotal != n_rows:
        return f"holds {faiss_index.ntotal} vectors but {store.path.name} has {n_rows} images"
    if id_summary(vectors.stored_ids(faiss_index)) != store.id_summary():
        return f"vector ids do not match the rows of {store.path.name}"
    return None


class ChunkWriter:
    """Commits a long run's results to an index in chunks and re-publishes it now and then.

    Images and skipped files queue up until ``commit_every`` of them are waiting; they are then
    committed in one SQLite transaction, together with the rows they replace. After a commit the
    FAISS file is re-published for concurrent readers when ``publish_every_s`` seconds have
    passed since the last publication, or ten times what that publication cost if more (a large
    ``ondisk`` index rewrites its lists to publish: never more than a tenth of the run). The
    owner calls :meth:`flush` at the end and :meth:`ImageIndex.save` in any case.
    """

    def __init__(self, index: ImageIndex, *, commit_every: int = 256, publish_every_s: float = 60.0):
        self.index = index
        self.commit_every, self.publish_every_s = commit_every, publish_every_s
        self._add: list[NewImage] = []
        self._bad: list[Skipped] = []
        self._remove: list[int] = []
        self._published, self._publish_cost = time.monotonic(), 0.0

    def add(self, image: NewImage, *, replaces: int | None = None) -> None:
        self._add.append(image)
        self._queued(replaces)

    def skip(self, skipped: Skipped, *, replaces: int | None = None) -> None:
        self._bad.append(skipped)
        self._queued(replaces)

    def _queued(self, replaces: int | None) -> None:
        if replaces is not None:
            self._remove.append(replaces)
        if len(self._add) + len(self._bad) >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        """Commit what is queued; publish if it is time to."""
        self.index.commit(remove=self._remove, add=self._add, skipped=self._bad)
        self._add, self._bad, self._remove = [], [], []
        if time.monotonic() - self._published > max(self.publish_every_s, 10 * self._publish_cost):
            start = time.monotonic()
            self.index.save()
            self._published = time.monotonic()
            self._publish_cost = self._published - start
