"""The vector side of an index directory, behind one small interface.

Two backends hold the FAISS index of ``vectors.faiss``:

- :class:`RamVectors`: the whole index in RAM (flat, hnsw, ivfpq, any factory string). Readers
  memory-map flat storage; a writer adds and, where the type allows (flat), removes in place.
- :class:`OndiskVectors`: ``ondisk`` indexes, whose inverted lists live in a memory-mapped
  ``.ivfdata`` file. The published lists are read-only (readers share them): vectors added since
  opening go to lists in RAM with the same quantizer and codec, and :meth:`publish` merges them
  into a new ``.ivfdata`` generation without re-training or re-encoding the published ones. Its
  8-bit codes' scores are approximate, so searches re-score the best candidates exactly with the
  vectors stored in SQLite.

Both count the ids they still hold for rows that SQLite no longer has (``stale``): searches ask
for that many more results and the caller skips rows it cannot find; the owner rebuilds before
publishing. :func:`open_vectors` picks the backend of a file, :func:`build` makes one from the
stored vectors.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from . import vectors
from .store import MetadataStore

# ondisk indexes: candidates re-scored with the stored vectors, per result asked for. At 10M
# vectors this lifted Recall@10 from 0.943 (the 8-bit codes' plateau) to 1.000, for 0.2 ms a query
# (bench/ondisk_scale.py).
RERANK, RERANK_MIN = 4, 40


class RamVectors:
    """A FAISS index held in RAM (or flat storage mapped read-only, for readers)."""

    def __init__(self, index: faiss.Index, *, unsaved: bool = False):
        self.faiss = index
        self.stale = 0
        self.unsaved = unsaved  # differs from its file: publish() writes it

    def __len__(self) -> int:
        return int(self.faiss.ntotal)

    def candidates(self, k: int) -> int:
        """How deep a search must go for ``k`` results (the recall check tunes at this depth)."""
        return k

    def search(self, queries: np.ndarray, k: int, store: MetadataStore) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (q, k), best first; ids -1 where there are fewer."""
        return vectors.search(self.faiss, queries, k)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        vectors.add(self.faiss, ids, vecs)
        self.unsaved = True

    def remove(self, ids: list[int]) -> None:
        if vectors.supports_removal(self.faiss):
            vectors.remove(self.faiss, ids)
            self.unsaved = True
        else:
            self.stale += len(ids)

    @property
    def settled(self) -> bool:
        """Whether everything it holds is in the structure its recall can be measured on."""
        return True

    def publish(self, path: Path, params: str) -> "RamVectors":
        """Write the file when it changed (a run that changed nothing leaves it alone)."""
        if self.unsaved or not path.is_file():
            vectors.save(self.faiss, path)
            vectors.remove_stale_generations(path)  # left by an ondisk index this one replaced
            self.unsaved = False
        return self


class OndiskVectors:
    """An IVF index whose published lists are mapped from an ``.ivfdata`` file."""

    def __init__(self, index: faiss.Index, path: Path, params: str):
        self.faiss = index
        self.path, self.params = path, params
        self.added: faiss.Index | None = None  # lists in RAM: vectors added since opening
        self.stale = 0

    def __len__(self) -> int:
        return int(self.faiss.ntotal) + (int(self.added.ntotal) if self.added is not None else 0)

    def candidates(self, k: int) -> int:
        return max(RERANK * k, RERANK_MIN)

    def search(self, queries: np.ndarray, k: int, store: MetadataStore) -> tuple[np.ndarray, np.ndarray]:
        """The best ``candidates(k)`` by their codes, re-scored exactly with ``store``'s vectors."""
        parts = [self.faiss] if self.added is None else [self.faiss, self.added]
        _, ids = vectors.search_all(parts, queries, self.candidates(k))
        stored = store.vectors_by_id(np.unique(ids[ids >= 0]))
        zero = np.zeros(self.faiss.d, np.float32)
        cand = np.stack([np.stack([stored.get(int(i), zero) for i in row]) for row in ids])  # (q, m, d)
        scores = np.einsum("qmd,qd->qm", cand, np.asarray(queries, np.float32))
        scores[~np.isin(ids, list(stored))] = -np.inf
        ids = np.where(np.isfinite(scores), ids, -1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if self.added is None:
            self.added = vectors.empty_like(self.path, self.params)
        vectors.add(self.added, ids, vecs)

    def remove(self, ids: list[int]) -> None:
        self.stale += len(ids)  # the mapped lists are read-only: the owner rebuilds

    @property
    def settled(self) -> bool:
        return self.added is None  # lists added in RAM: measured once merged

    def catch_up(self, store: MetadataStore) -> None:
        """For a file behind SQLite (a killed writer): the stored rows it lacks go to lists in
        RAM, and the ids it holds whose rows are gone count as stale. Nothing is written."""
        have, want = vectors.stored_ids(self.faiss), store.ids()
        missing = np.setdiff1d(want, have)
        for start in range(0, len(missing), 10_000):
            chunk = missing[start:start + 10_000]
            found = store.vectors_by_id(chunk)
            self.add(chunk, np.stack([found[int(i)] for i in chunk]))
        self.stale = len(np.setdiff1d(have, want))

    def publish(self, path: Path, params: str) -> "OndiskVectors":
        """Merge the lists added in RAM into a new generation of the data file, published."""
        if self.added is None:
            return self
        vectors.save_ondisk(vectors.empty_like(path, params), path, also=[self.faiss, self.added])
        return OndiskVectors(vectors.load(path, params), path, params)


Backend = RamVectors | OndiskVectors


def open_vectors(path: Path, spec: vectors.IndexSpec, *, reader: bool) -> Backend:
    """The backend of the FAISS file at ``path`` (:class:`IndexCorruptError` if unreadable).
    A reader maps flat storage instead of reading it (not possible for ondisk files)."""
    index = vectors.load(path, spec.params, mapped=reader and not vectors.is_ondisk_type(spec.index_type))
    return OndiskVectors(index, path, spec.params) if vectors.is_ondisk(index) else RamVectors(index)


def build(spec: vectors.IndexSpec, dim: int, store: MetadataStore, path: Path | None = None) -> Backend:
    """A backend rebuilt from the stored vectors. A writer passes ``path``: an ``ondisk`` index
    is then trained on a sample and filled shard by shard straight into a new generation of files
    there (published), never holding all vectors; anything else is written by :meth:`publish`.
    Readers get an in-RAM copy."""
    n = store.count()
    if path is not None and vectors.is_ondisk_type(spec.index_type) and not spec.factory.startswith("IDMap") and n:
        trained = vectors.train_ondisk(dim, spec.factory, store.iter_vectors, n, params=spec.params)
        vectors.save_ondisk(trained, path, store.iter_vectors())
        return OndiskVectors(vectors.load(path, spec.params), path, spec.params)
    parts = list(store.iter_vectors())
    if not parts:
        empty = vectors.new_index(dim, spec.factory)
        index = empty if empty.is_trained else vectors.new_index(dim, vectors.DEFAULT_FACTORY)
    else:
        ids = np.concatenate([p[0] for p in parts])
        vecs = np.concatenate([p[1] for p in parts])
        index = vectors.build_index(dim, ids, vecs, spec.factory, params=spec.params)
    return RamVectors(index, unsaved=True)
