"""The FAISS side of an index: plain functions over ``(n, d) float32`` unit vectors.

Vectors carry the SQLite row ids through ``IndexIDMap2``. The metric is inner product, which on
L2-normalised vectors is cosine similarity. The index type is a FAISS factory string plus
search parameters (:class:`IndexSpec`), chosen by :func:`choose`:

- ``flat``: exact search, 4 x dim bytes per vector.
- ``hnsw``: ``HNSW32,Flat`` graph over the full vectors, ``efSearch=512``.
- ``ivfpq``: inverted lists of 4-bit fast-scan PQ codes (dim/2 subquantisers), re-ranked with
  8-bit scalar-quantised vectors: ``IVF{nlist},PQ{dim/2}x4fs,Refine(SQ8)`` with nlist about
  4 sqrt(n), ``nprobe=nlist/32`` (at least 32) and ``k_factor_rf=64``; about 1.4 x dim bytes per
  vector.
- ``auto``: flat below 200,000 vectors, ivfpq beyond; re-chosen (and re-trained on the stored
  vectors) whenever the size calls for another number of lists.

Defaults were set with bench/search_scale.py on 1,000,000 clustered 128-d vectors: hnsw with
efSearch 128/256/512 reached Recall@10 0.912/0.946/0.955; ivfpq with k_factor_rf 8/32/64 reached
0.749/0.952/0.956, at 180 bytes per vector against 792 for hnsw.
- anything else is taken as a FAISS factory string, for experts.

Only flat indexes support removing vectors in place; the others are rebuilt from the stored
vectors after removals. This module needs no torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import IndexCorruptError, InputError

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
FLAT_BELOW = 200_000
DEFAULT_FACTORY = "IDMap2,Flat"


@dataclass(frozen=True)
class IndexSpec:
    index_type: str  # as asked for: auto, flat, hnsw, ivfpq, or a factory string
    factory: str
    params: str = ""  # faiss.ParameterSpace string applied after loading, e.g. "efSearch=128"
    built_for: int = 0  # collection size it was chosen for

    def to_dict(self) -> dict:
        return {**asdict(self), "metric": "inner_product"}

    @classmethod
    def from_dict(cls, d: dict) -> "IndexSpec":
        return cls(d.get("index_type", "flat"), d["factory"], d.get("params", ""), int(d.get("built_for", 0)))


def _ivf_lists(n: int) -> int:
    """About 4 sqrt(n) lists, a power of two, with at least 39 training points per list."""
    nlist = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(max(n, 1)))))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def choose(index_type: str, n: int, dim: int) -> IndexSpec:
    """The index to hold ``n`` vectors of dimension ``dim`` for the requested type."""
    kind = index_type
    if kind == "auto":
        kind = "flat" if n < FLAT_BELOW else "ivfpq"
    if kind == "flat":
        return IndexSpec(index_type, DEFAULT_FACTORY, "", n)
    if kind == "hnsw":
        return IndexSpec(index_type, "IDMap2,HNSW32,Flat", "efSearch=512", n)
    if kind == "ivfpq":
        if n < 39 * 16 or dim % 2:
            return IndexSpec(index_type, DEFAULT_FACTORY, "", n)  # too few vectors to train: stay exact
        nlist = _ivf_lists(n)
        return IndexSpec(index_type, f"IDMap2,IVF{nlist},PQ{dim // 2}x4fs,Refine(SQ8)",
                         f"nprobe={min(nlist, max(32, nlist // 32))},k_factor_rf=64", n)
    try:
        faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(f"--index-type {kind!r} is neither {'|'.join(INDEX_TYPES)} nor a FAISS factory "
                         f"string ({str(e).strip().splitlines()[-1][:120]})") from None
    factory = kind if kind.startswith("IDMap") else f"IDMap2,{kind}"
    return IndexSpec(index_type, factory, "", n)


def new_index(dim: int, factory: str = DEFAULT_FACTORY) -> faiss.Index:
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def apply_params(index: faiss.Index, params: str) -> None:
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)


def supports_removal(index: faiss.Index) -> bool:
    return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat) if hasattr(index, "index") else False


def build_index(dim: int, ids: np.ndarray, vectors: np.ndarray, factory: str = DEFAULT_FACTORY, *,
                params: str = "", train_sample: int = 500_000, shard: int = 200_000, seed: int = 0) -> faiss.Index:
    """A fresh index holding ``vectors`` (n, dim) under ``ids`` (n,): trained on a seeded sample of
    at most ``train_sample`` vectors, then filled ``shard`` vectors at a time."""
    index = new_index(dim, factory)
    vectors = np.ascontiguousarray(vectors, np.float32)
    if not index.is_trained and len(vectors):
        rng = np.random.default_rng(seed)
        sample = vectors if len(vectors) <= train_sample else vectors[np.sort(rng.choice(len(vectors), train_sample, replace=False))]
        index.train(sample)
    for start in range(0, len(vectors), shard):
        index.add_with_ids(vectors[start:start + shard], np.ascontiguousarray(ids[start:start + shard], np.int64))
    apply_params(index, params)
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


def load(path: Path, params: str = "") -> faiss.Index:
    path = Path(path)
    if not path.is_file():
        raise IndexCorruptError(f"{path}: FAISS file is missing")
    try:
        index = faiss.read_index(str(path))
        apply_params(index, params)
        return index
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "unreadable"
        raise IndexCorruptError(f"{path}: truncated or damaged FAISS file ({detail})") from None
