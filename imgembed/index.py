"""An index directory: ``manifest.json`` + ``metadata.sqlite`` + ``vectors.faiss``.

The manifest says what the directory is (format version), which model made the vectors and how
to load it again, and which FAISS index type holds them. SQLite holds one row per image with
its vector; the FAISS file is derived from those vectors. Writers that find the two out of step
(a run interrupted between its SQLite commits and its final FAISS save) rebuild the FAISS file
from SQLite; readers refuse such an index with a message naming the file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, recall, vectors
from .errors import IndexCorruptError, IndexNotFoundError, IndexVersionError, ModelMismatchError
from .files import atomic_path
from .lock import WriterLock, writer_active
from .store import ImageRow, MetadataStore, NewImage, Skipped, id_summary

FORMAT = "imgembed-index"
FORMAT_VERSION = 1
MANIFEST, DATABASE, FAISS_FILE = "manifest.json", "metadata.sqlite", "vectors.faiss"
# ondisk indexes: candidates re-scored with the stored vectors, per result asked for. At 10M
# vectors this lifted Recall@10 from 0.943 (the 8-bit codes' plateau) to 1.000, for 0.2 ms a query
# (bench/ondisk_scale.py).
RERANK, RERANK_MIN = 4, 40


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    row: ImageRow
    source: int = 0  # which of several indexes searched as one holds it (api.Searcher)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexNotFoundError(f"no imgembed index in {directory} ({MANIFEST} missing); "
                                 f"build one with: imgembed index FOLDER --index {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexCorruptError(f"{path}: damaged manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{path}: not an imgembed index manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexVersionError(f"{path}: index format version {version} is not supported by this "
                                f"imgembed (reads up to {FORMAT_VERSION}); upgrade imgembed")
    return manifest


def describe_mismatch(expected: dict, actual: dict) -> str:
    keys = [k for k in sorted(set(expected) | set(actual)) if expected.get(k) != actual.get(k)]
    return "; ".join(f"{k}: index has {expected.get(k)!r}, model has {actual.get(k)!r}" for k in keys)


class ImageIndex:
    """An open index. Open with :meth:`open` (read) or :meth:`open_for_write`; close when done."""

    def __init__(self, directory: Path, manifest: dict, store: MetadataStore, faiss_index,
                 lock: WriterLock | None = None, problem: str | None = None):
        self.directory = directory
        self.manifest = manifest
        self.store = store
        self.faiss = faiss_index
        self.lock = lock
        # Set when a reader found the FAISS file out of step with SQLite and no writer running
        # (a crashed run): it then searches a copy rebuilt in memory, and says so here.
        self.problem = problem
        self._stale = 0  # rows removed from SQLite but still in FAISS; save() rebuilds
        # On-disk lists are mapped read-only (readers may share them): a writer collects the
        # vectors it adds in RAM, with the same quantizer and codec, and save() merges them into
        # a new .ivfdata generation without re-training or re-encoding the published ones.
        self._added = None
        self._rebuilt = False  # since opening: the next save() checks recall again
        self._unsaved = False  # the in-RAM FAISS index differs from its file: save() writes it

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
        _check_model(directory, manifest, model_identity)
        store = MetadataStore(directory / DATABASE)
        added, excess = None, 0
        try:
            spec = _spec(manifest)
            faiss_index = vectors.load(directory / FAISS_FILE, spec.params, mapped=not vectors.is_ondisk_type(spec.index_type))
            problem = _consistency_problem(manifest, store, faiss_index)
            if problem and not writer_active(directory):
                problem = f"{directory / FAISS_FILE}: {problem}"
                if vectors.is_ondisk(faiss_index) and faiss_index.d == int(manifest["model"]["dim"]):
                    added, excess = _catch_up(directory / FAISS_FILE, _spec(manifest).params, store, faiss_index)
                else:
                    faiss_index = _rebuild(manifest, store)
            else:
                problem = None
        except BaseException:
            store.close()
            raise
        index = cls(directory, manifest, store, faiss_index, problem=problem)
        index._added, index._stale = added, excess
        return index

    @classmethod
    def open_for_write(cls, directory: str | Path, model_identity: dict | None, model_source: dict | None = None,
                       index_type: str | None = None, *, wait: bool = False,
                       target_recall: float | None = None) -> "ImageIndex":
        """Open or create, holding the writer lock (:class:`IndexLockedError` if another process
        holds it, unless ``wait``). A missing or out-of-step FAISS file is rebuilt from SQLite.

        ``index_type`` (see :mod:`imgembed.vectors`) applies from the next :meth:`save`; None
        keeps the index's own (``auto`` for a new one). So does ``target_recall``, the Recall@10
        an approximate index is tuned to reach (see :mod:`imgembed.recall`; None keeps the
        index's own, 0.95 for a new one).
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
            _check_model(directory, manifest, model_identity)
            store = MetadataStore(directory / DATABASE)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            spec = vectors.choose(index_type or "auto", 0, int(model_identity["dim"]))
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "created_at": _now(),
                "model": model_identity, "model_source": model_source, "faiss": spec.to_dict(),
            }
            store = MetadataStore(directory / DATABASE, create=True)
        try:
            try:
                faiss_index = vectors.load(directory / FAISS_FILE, _spec(manifest).params)
                stale = _consistency_problem(manifest, store, faiss_index) is not None
            except IndexCorruptError:
                stale = True
            if stale:
                faiss_index = _rebuild(manifest, store, directory / FAISS_FILE)
        except BaseException:
            store.close()
            raise
        index = cls(directory, manifest, store, faiss_index, lock=lock)
        index._unsaved = stale
        if index_type is not None and index_type != _spec(manifest).index_type:
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
        return int(self.faiss.ntotal) + (int(self._added.ntotal) if self._added is not None else 0)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """For each row of ``queries`` (q, dim), up to ``k`` hits, best first.

        An ``ondisk`` index stores 8-bit codes, whose scores are approximate: its best
        ``RERANK x k`` candidates (at least ``RERANK_MIN``) are re-scored exactly with the vectors
        stored in SQLite, so ranks and scores are those of the real vectors.
        """
        indexes = [self.faiss] if self._added is None else [self.faiss, self._added]
        want = k + self._stale  # stale ids are skipped
        if vectors.is_ondisk(self.faiss):
            _, ids = vectors.search_all(indexes, queries, max(RERANK * want, RERANK_MIN))
            scores, ids = self._exact_scores(queries, ids, want)
        else:
            scores, ids = vectors.search_all(indexes, queries, want)
        rows = self.store.rows_by_id(i for i in ids.ravel() if i >= 0)
        return [[Hit(rank, float(s), rows[int(i)]) for rank, (s, i) in enumerate(
                    [(s, i) for s, i in zip(srow, irow) if i >= 0 and int(i) in rows][:k], start=1)]
                for srow, irow in zip(scores, ids)]

    def _exact_scores(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-score candidate ``ids`` (q, m) with the stored vectors; the best ``k`` of each row."""
        stored = self.store.vectors_by_id(np.unique(ids[ids >= 0]))
        zero = np.zeros(self.dim, np.float32)
        cand = np.stack([np.stack([stored.get(int(i), zero) for i in row]) for row in ids])  # (q, m, d)
        scores = np.einsum("qmd,qd->qm", cand, np.asarray(queries, np.float32))
        scores[~np.isin(ids, list(stored))] = -np.inf
        ids = np.where(np.isfinite(scores), ids, -1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    # -- writing -------------------------------------------------------------------------

    def commit(self, *, remove=(), add: list[NewImage] = (), skipped: list[Skipped] = (), moves=(),
               touches=(), vanish=(), restored=()) -> list[int]:
        """Apply a chunk to SQLite (one transaction), then to the in-memory FAISS index.

        ``moves`` ``(id, path, label, mtime_ns)`` and ``touches`` ``(id, mtime_ns)`` change only
        metadata: the vectors stay. ``vanish`` removes rows but keeps tombstones of them, and
        ``restored`` names the tombstones that rows in ``add`` bring back
        (:meth:`MetadataStore.commit`).
        """
        remove, vanish = list(remove), list(vanish)
        ids = self.store.commit(remove=remove, add=add, skipped=skipped, moves=moves, touches=touches,
                                vanish=vanish, restored=restored)
        remove = remove + vanish
        if remove and vectors.supports_removal(self.faiss):
            vectors.remove(self.faiss, remove)
            self._unsaved = True
        elif remove:
            self._stale += len(remove)  # searches skip the removed ids (no row); save() rebuilds
        if add:
            target = self.faiss
            if vectors.is_ondisk(self.faiss):
                if self._added is None:
                    self._added = vectors.empty_like(self.directory / FAISS_FILE, _spec(self.manifest).params)
                target = self._added
            vectors.add(target, np.asarray(ids, np.int64), np.stack([a.vector for a in add]))
            self._unsaved = self._unsaved or target is self.faiss
        return ids

    def rebuild(self, index_type: str | None = None) -> vectors.IndexSpec:
        """Rebuild the FAISS index from the stored vectors, as ``index_type`` (default: its own)."""
        spec = vectors.choose(index_type or _spec(self.manifest).index_type, self.store.count(), self.dim)
        self.manifest["faiss"] = spec.to_dict()
        self.faiss = _rebuild(self.manifest, self.store, self.directory / FAISS_FILE)
        self._stale, self._added, self._rebuilt, self._unsaved = 0, None, True, True
        return spec

    def save(self) -> None:
        """Write the FAISS file, then the manifest, each atomically.

        First rebuilds the FAISS index when it holds removed rows, or when its type calls for
        another structure at the current size (``auto`` growing from flat to hnsw to ivfpq,
        ``ondisk`` growing its number of lists). An ``ondisk`` index is rebuilt straight into a
        new ``.ivfdata`` generation, or gets the vectors added since it was opened merged into
        one, and is then already published: see :func:`vectors.save_ondisk`.
        """
        current = _spec(self.manifest)
        wanted = vectors.choose(current.index_type, self.store.count(), self.dim)
        path = self.directory / FAISS_FILE
        if self._stale or wanted.factory != current.factory:
            self.rebuild()
        elif self._added is not None:
            vectors.save_ondisk(vectors.empty_like(path, current.params), path, also=[self.faiss, self._added])
            self.faiss, self._added = vectors.load(path, current.params), None
        if not vectors.is_ondisk(self.faiss) and (self._unsaved or not path.is_file()):
            vectors.save(self.faiss, path)  # a run that changed nothing leaves the file alone
            vectors.remove_stale_generations(path)  # left by an ondisk index this one replaced
            self._unsaved = False
        self._check_recall()
        labels = self.store.labels()
        self.manifest.update({
            "updated_at": _now(), "imgembed_version": __version__,
            "counts": {"images": len(self), "skipped": len(self.store.skipped()),
                       "labels": sum(1 for label in labels if label is not None)},
            "roots": self.store.roots(),
        })
        write_json_atomic(self.directory / MANIFEST, self.manifest)


    def _check_recall(self) -> None:
        """Measure an approximate index's Recall@10 on its own vectors and tune its search
        parameters to the target (:func:`recall.tune`), when it was rebuilt, has doubled in size
        or the target changed since it was last measured; an exact index has no recall to check."""
        spec, n = _spec(self.manifest), len(self)
        if not recall.tunable(spec.factory) or n <= recall.K + 1:
            self.manifest.pop("recall", None)
            return
        last = self.recall_check
        if last is not None and not self._rebuilt and last.target == self.target_recall and 2 * last.n > n:
            return
        if self._added is not None:  # lists added in RAM since opening: measured once merged
            return
        ids = self.store.ids()
        sample = np.sort(np.random.default_rng(0).choice(ids, min(recall.SAMPLE, len(ids)), replace=False))
        stored = self.store.vectors_by_id(sample)
        queries, query_ids = recall.check_queries(self.faiss, np.stack([stored[int(i)] for i in sample]), sample)
        truth, exact_ms = recall.exact_neighbours(queries, query_ids, self.store.iter_vectors())
        ondisk = vectors.is_ondisk(self.faiss)
        check = recall.tune(self.faiss, spec.factory, queries, query_ids, truth, exact_ms, n,
                            target=self.target_recall, depth=max(RERANK * recall.K, RERANK_MIN) if ondisk else recall.K)
        self.manifest["faiss"] = {**self.manifest["faiss"], "params": check.params}
        self.manifest["recall"] = check.to_dict()
        self._rebuilt = False


def _check_model(directory: Path, manifest: dict, identity: dict | None) -> None:
    if identity is not None and manifest.get("model") != identity:
        raise ModelMismatchError(
            f"{directory / MANIFEST}: index was built with another model ({describe_mismatch(manifest.get('model') or {}, identity)}); "
            "search it without --model, or index into a new --index DIR")


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


def _catch_up(path: Path, params: str, store: MetadataStore, ondisk) -> tuple:
    """For an ``ondisk`` index behind SQLite: (lists in RAM holding the stored rows its file
    lacks, the number of ids it holds whose rows are gone)."""
    have, want = vectors.stored_ids(ondisk), store.ids()
    missing = np.setdiff1d(want, have)
    added = vectors.empty_like(path, params)
    for start in range(0, len(missing), 10_000):
        chunk = missing[start:start + 10_000]
        found = store.vectors_by_id(chunk)
        vectors.add(added, chunk, np.stack([found[int(i)] for i in chunk]))
    return added, len(np.setdiff1d(have, want))


def _spec(manifest: dict) -> vectors.IndexSpec:
    return vectors.IndexSpec.from_dict(manifest["faiss"])


def _rebuild(manifest: dict, store: MetadataStore, path: Path | None = None):
    """The FAISS index rebuilt from the stored vectors. A writer passes ``path``: an ``ondisk``
    index is then trained on a sample and filled shard by shard straight into a new generation
    of files there (published), never holding all vectors. Readers get an in-RAM copy."""
    dim = int(manifest["model"]["dim"])
    spec = _spec(manifest)
    if path is not None and _is_ondisk_spec(spec) and store.count():
        n = store.count()
        trained = vectors.train_ondisk(dim, spec.factory, store.iter_vectors, n, params=spec.params)
        vectors.save_ondisk(trained, path, store.iter_vectors())
        return vectors.load(path, spec.params)
    parts = list(store.iter_vectors())
    if not parts:
        empty = vectors.new_index(dim, spec.factory)
        return empty if empty.is_trained else vectors.new_index(dim, vectors.DEFAULT_FACTORY)
    ids = np.concatenate([p[0] for p in parts])
    vecs = np.concatenate([p[1] for p in parts])
    return vectors.build_index(dim, ids, vecs, spec.factory, params=spec.params)


def _is_ondisk_spec(spec: vectors.IndexSpec) -> bool:
    return vectors.is_ondisk_type(spec.index_type) and not spec.factory.startswith("IDMap")
