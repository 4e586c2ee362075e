"""The map of an index: its images laid out in 2-D (:mod:`imgembed.collection.layout`), computed
once for each set of vectors and cached in the index directory.

The layout depends on the vectors alone, so it is keyed by the set of row ids (rows are never
given another vector in place: a changed file gets a new row) and the layout's settings: a run
of ``index`` that adds or removes images makes a new map, one that moves or relabels images
keeps it (labels are read afresh by whoever draws it). The cache is ``map.<key>.npz`` in the
index directory (row ids and positions), written atomically; maps of earlier keys are removed
once a new one is written. An index directory that cannot be written to gets its map computed
and not cached.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..collection import layout
from ..errors import InputError
from ..imaging.files import atomic_path
from ..index import ImageIndex

StageProgress = Callable[[str, int, int], None]  # (stage, done, total)
CACHE_PREFIX, CACHE_SUFFIX = "map.", ".npz"
LAYOUT_VERSION = 1  # bump when the layout's method or settings change: cached maps are then stale
PCA_SAMPLE = 20_000  # images whose principal components start the layout
BATCH = 1024  # images searched at once for their neighbours


@dataclass(frozen=True)
class MapLayout:
    """``ids`` (n,) int64 row ids in id order, ``xy`` (n, 2) float32 positions in the unit
    square; ``key`` the vectors' key; ``computed`` False where it came from the cache."""

    ids: np.ndarray
    xy: np.ndarray
    key: str
    computed: bool
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)


def map_key(idx: ImageIndex) -> str:
    """The key of an open index's current vectors and of the layout's settings."""
    n, total, mixed = idx.store.id_summary()
    text = f"tsne:{LAYOUT_VERSION}:{layout.PERPLEXITY}:{layout.EARLY_ITERATIONS}:{layout.ITERATIONS}:{n}:{total}:{mixed}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cache_path(index_dir: Path, key: str) -> Path:
    return Path(index_dir) / f"{CACHE_PREFIX}{key}{CACHE_SUFFIX}"


def cached_map(index_dir: str | Path) -> MapLayout | None:
    """The index's map if it is cached for its current vectors, else None (no model, no layout)."""
    with ImageIndex.open(index_dir) as idx:
        return cached_map_of(idx)


def cached_map_of(idx: ImageIndex) -> MapLayout | None:
    """:func:`cached_map` of an index already open (a server's), without opening it again."""
    key = map_key(idx)
    return _read(cache_path(Path(idx.directory), key), key, len(idx))


def index_map(index_dir: str | Path, *, seed: int = 0, progress: StageProgress | None = None) -> MapLayout:
    """The map of the index at ``index_dir`` (opened read-only): read from its cache where one
    was made for the current vectors, else computed (``progress(stage, done, total)`` for the
    stages ``neighbours``, each image's nearest others searched in the index, and ``layout``,
    the t-SNE iterations) and cached. Needs the ``map`` extra (openTSNE) to compute:
    :class:`~imgembed.errors.ExtraMissingError` otherwise. Memory: O(images x neighbours)."""
    index_dir = Path(index_dir)
    with ImageIndex.open(index_dir) as idx:
        key = map_key(idx)
        path = cache_path(index_dir, key)
        found = _read(path, key, len(idx))
        if found is not None:
            return found
        n = idx.store.count()
        if n == 0:
            raise InputError(f"{index_dir}: the index is empty: nothing to map")
        if n >= layout.MIN_TSNE:
            layout.require()  # before the search, not after
        ids, neighbours, cosines, start = _neighbourhoods(idx, layout.neighbours_needed(n), progress)
    xy = layout.layout(neighbours, cosines, start, seed=seed,
                       progress=(lambda d, t: progress("layout", d, t)) if progress else None)
    written = _write(path, ids, xy)
    return MapLayout(ids, xy, key, computed=True, path=path if written else None)


def _read(path: Path, key: str, n: int) -> MapLayout | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, xy = data["ids"].astype(np.int64), data["xy"].astype(np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # missing, or damaged: computed again
        return None
    if ids.shape != (n,) or xy.shape != (n, 2):
        return None
    return MapLayout(ids, xy, key, computed=False, path=path)


def _write(path: Path, ids: np.ndarray, xy: np.ndarray) -> bool:
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, ids=ids, xy=xy)
    except OSError:  # a read-only index: the map is computed, not kept
        return False
    for old in path.parent.glob(f"{CACHE_PREFIX}*{CACHE_SUFFIX}"):
        if old != path:
            old.unlink(missing_ok=True)
    return True


def _neighbourhoods(idx: ImageIndex, k: int, progress: StageProgress | None):
    """Row ids in id order, each image's ``k`` nearest others as positions in that order with
    their cosines, and the starting layout (the first two principal components of a sample)."""
    ids = idx.store.ids()
    position = {int(i): p for p, i in enumerate(ids.tolist())}
    rng = np.random.default_rng(0)
    sample = ids if len(ids) <= PCA_SAMPLE else np.sort(rng.choice(ids, PCA_SAMPLE, replace=False))
    stored = idx.store.vectors_by_id(sample.tolist())
    mean, axes = layout.principal_axes(np.stack([stored[int(i)] for i in sample]))
    start = np.zeros((len(ids), 2))
    neighbours = np.full((len(ids), k), -1, np.int64)
    cosines = np.zeros((len(ids), k), np.float32)
    done = 0
    for batch_ids, vecs in idx.store.iter_vectors(batch=BATCH):
        rows = [position[int(i)] for i in batch_ids.tolist()]
        start[rows] = (vecs - mean) @ axes.T
        if k:
            for p, i, v, hits in zip(rows, batch_ids.tolist(), vecs, idx.search(vecs, k + 1)):
                others = [(position[h.row.id], h.score) for h in hits if h.row.id != i and h.row.id in position][:k]
                if len(others) < k:  # an approximate index found too few: these rows exactly
                    others = _exact(idx, v, i, k, position)
                neighbours[p] = [o for o, _ in others]
                cosines[p] = [s for _, s in others]
        done += len(batch_ids)
        if progress:
            progress("neighbours", done, len(ids))
    return ids, neighbours, cosines, start


def _exact(idx: ImageIndex, vector: np.ndarray, own: int, k: int, position: dict) -> list[tuple[int, float]]:
    best: list[tuple[float, int]] = []
    for batch_ids, vecs in idx.store.iter_vectors():
        scores = vecs @ vector
        for s, i in zip(scores.tolist(), batch_ids.tolist()):
            if i != own:
                best.append((s, i))
        best = sorted(best, reverse=True)[:k]
    return [(position[i], s) for s, i in best]
