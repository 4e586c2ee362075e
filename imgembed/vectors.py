"""The FAISS side of an index: plain functions over ``(n, d) float32`` unit vectors.

Vectors carry the SQLite row ids through ``IndexIDMap2`` so rows can be removed and looked up
without rebuilding. The metric is inner product, which on L2-normalised vectors is cosine
similarity. The index type is a FAISS factory string, so it can be swapped without touching
callers; this module needs no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from .errors import IndexCorruptError

DEFAULT_FACTORY = "IDMap2,Flat"


def new_index(dim: int, factory: str = DEFAULT_FACTORY) -> faiss.Index:
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def build_index(dim: int, ids: np.ndarray, vectors: np.ndarray, factory: str = DEFAULT_FACTORY) -> faiss.Index:
    """A fresh index holding ``vectors`` (n, dim) under ``ids`` (n,)."""
    index = new_index(dim, factory)
    if not index.is_trained and len(vectors):
        index.train(vectors)
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))
    return index


def add(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))


def remove(index: faiss.Index, ids) -> None:
    ids = np.asarray(list(ids), np.int64)
    if len(ids):
        index.remove_ids(ids)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (q, k), ids (q, k))``, best first; missing neighbours have id -1."""
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    if index.ntotal == 0:
        q = len(queries)
        return np.full((q, k), -np.inf, np.float32), np.full((q, k), -1, np.int64)
    return index.search(np.ascontiguousarray(queries, np.float32), k)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """The ids held by an ``IndexIDMap``/``IDMap2`` index."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def save(index: faiss.Index, path: Path) -> None:
    """Write atomically: a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> faiss.Index:
    path = Path(path)
    if not path.is_file():
        raise IndexCorruptError(f"{path}: FAISS file is missing")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "unreadable"
        raise IndexCorruptError(f"{path}: truncated or damaged FAISS file ({detail})") from None
