"""The FAISS side of an index: plain functions over ``(n, d) float32`` unit vectors.

Vectors carry the SQLite row ids through ``IndexIDMap2``. The metric is inner product, which on
L2-normalised vectors is cosine similarity. The index type is a FAISS factory string plus
search parameters (:class:`IndexSpec`), chosen by :func:`choose`:

- ``flat``: exact search, 4 x dim bytes per vector.
- ``hnsw``: ``HNSW32,Flat`` graph over the full vectors, ``efSearch=512``.
- ``ivfpq``: inverted lists of 4-bit fast-scan PQ codes (dim/2 subquantisers), re-ranked with
  the vectors in 16-bit floats: ``IVF{nlist},PQ{dim/2}x4fs,Refine(SQfp16)`` with nlist about
  4 sqrt(n) (``IVF{nlist}_HNSW32``, an HNSW graph over the centroids, from 8,192 lists on),
  ``nprobe=nlist/16`` (at least 32) and ``k_factor_rf=256`` until the recall check tunes them;
  about 2.4 x dim bytes per vector (308 B at 128-d). Indexes built by earlier versions with
  ``Refine(SQ8)`` keep it until their number of lists changes (or ``imgembed rebuild``).
- ``auto``: flat below 200,000 vectors, ivfpq beyond; re-chosen (and re-trained on the stored
  vectors) whenever the size calls for another number of lists.
- ``ondisk``: for collections larger than RAM. ``IVF{nlist},SQ8`` (an HNSW32 graph over the
  centroids from 1,024 lists on) with nlist about 2 sqrt(n) and ``nprobe=nlist/128`` (at least
  32); ``ondisk:CODE`` takes another codec, e.g. ``ondisk:SQfp16``. The lists, codes plus int64
  ids (dim + 8 bytes a vector for SQ8), live in a ``vectors.{generation}.ivfdata`` file beside
  ``vectors.faiss``, which holds only the quantizer and the list offsets and names the data file
  by its bare name. Searchers map the data file read-only (FAISS ``OnDiskInvertedLists``): its
  pages are page cache the kernel can drop, so a process needs RAM for the quantizer and the
  lists a query touches, not for the index. No ``IDMap2`` wrapper: its id maps would cost 16 B a
  vector of RAM; ids live in the lists. Never picked by ``auto``: in RAM, ivfpq is faster and
  more accurate; choose ondisk when the index would not fit in the RAM of the searching machines.
- anything else is taken as a FAISS factory string, for experts.

ivfpq was chosen with bench/ann_1m.py on crowded and mixed 1,000,000 x 128 collections (tuning
sets, then held-out ones; docs/scaling.md). 8-bit re-ranking codes capped Recall@10 at 0.95-0.96
on crowded sets, below the recall check's aim of 0.97, however deep it re-ranked; 16-bit floats
reach 0.970-0.978 at nprobe 256 of 4,096 lists and 256 candidates a hit, 1.0-1.2 ms a query, 23-33x
an exact query on one core. 16,384 lists behind an HNSW graph were 2.5x slower at the same recall
and 4x slower to train; HNSW32 over the full vectors (784 B/vector) reached 0.964 at 7.9 ms, over
8-bit codes never 0.95; an HNSW graph over 4,096 centroids cost 0.6 ms a query more than scanning
them, hence the graph only from 8,192 lists on. k-means trains on 64 vectors a list, 10
iterations (1M: built in 80 s on 2 cores). Earlier, bench/search_scale.py on less crowded data
(2,000 clusters, noise 0.6) had hnsw at efSearch 128/256/512 reach 0.912/0.946/0.955.

ondisk was measured with bench/ondisk_scale.py on 10,000,000 clustered 128-d vectors (2 shared
cores): ``IVF8192_HNSW32,SQ8``, 136.7 bytes per vector on disk (1.37 GB), built in 26 min (train
on 409,600 sampled vectors 3 min, add and merge 20 min); Recall@10 0.9415/0.943/0.943/0.943 at
nprobe 16/32/64/128: a plateau set by the 8-bit codes, which fall behind as neighbours crowd
(1M: 0.967, 200k: 0.973). With ``ondisk:SQfp16`` (265.7 B/vector) 1M reached 0.999. nprobe
nlist/128 is twice where recall stopped growing on this data, as margin for real embeddings. A
searching process holds about 31 MB of its own memory plus the mapped pages the kernel leaves it;
one query at nprobe 64 took 2.4 ms (median) with the file in page cache, and 266 ms under a
512 MiB cgroup memory limit (2.6x smaller than the index), where every probe reads from disk.
``ImageIndex.search`` lifts the plateau by re-scoring the best 40 candidates with the vectors
stored in SQLite: Recall@10 1.000 at 10M, for 0.2 ms a query.

Only flat indexes support removing vectors in place; the others are rebuilt from the stored
vectors after removals. This module needs no torch.

Over 400 lines because every FAISS index type imgembed builds is defined, built, searched,
saved and checked here, so that the rest of the index package never names a FAISS class.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import faiss
import numpy as np

from ..errors import IndexCorruptError, InputError
from ..imaging.files import atomic_path

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq", "ondisk")
ONDISK_MIN_NPROBE = 32
FLAT_BELOW = 200_000
# ivfpq finds its lists through an HNSW graph over the centroids from this many lists on (about
# 2.2M vectors), where scanning every centroid at each query and assigning every vector exactly at
# build (O(n x nlist)) grow costly; at 4,096 lists (1M) the scan is the faster (bench/ann_1m.py:
# the graph cost 0.6 ms a query more at the same recall).
HNSW_QUANTIZER_FROM = 8192
IVF_TRAIN_PER_LIST = 64  # k-means sample per list for in-RAM IVF indexes (bench/ann_1m.py)
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
    if is_ondisk_type(kind):
        return _ondisk_spec(index_type, n, dim)
    if kind == "ivfpq":
        if n < 39 * 16 or dim % 2:
            return IndexSpec(index_type, DEFAULT_FACTORY, "", n)  # too few vectors to train: stay exact
        nlist = _ivf_lists(n)
        quantizer = "_HNSW32" if nlist >= HNSW_QUANTIZER_FROM else ""
        nprobe = min(nlist, max(32, nlist // 16))
        params = f"nprobe={nprobe}" + (f",quantizer_efSearch={2 * nprobe}" if quantizer else "") + ",k_factor_rf=256"
        return IndexSpec(index_type, f"IDMap2,IVF{nlist}{quantizer},PQ{dim // 2}x4fs,Refine(SQfp16)", params, n)
    try:
        faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(f"--index-type {kind!r} is neither {'|'.join(INDEX_TYPES)} nor a FAISS factory "
                         f"string ({str(e).strip().splitlines()[-1][:120]})") from None
    factory = kind if kind.startswith("IDMap") else f"IDMap2,{kind}"
    return IndexSpec(index_type, factory, "", n)


def _lists_of(factory: str) -> int | None:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else None


def calls_for_rebuild(current: IndexSpec, wanted: IndexSpec) -> bool:
    """Whether an index built as ``current`` must be rebuilt as ``wanted`` (what :func:`choose`
    gives at today's size): when the structure differs, except that an IVF index keeps its codec
    and quantizer, as an earlier version chose them, until its size calls for another number of
    lists (``imgembed rebuild`` brings it to today's choice at once)."""
    if wanted.factory == current.factory:
        return False
    lists = _lists_of(current.factory)
    return lists is None or lists != _lists_of(wanted.factory) or current.index_type != wanted.index_type


def is_stand_in(index: faiss.Index, factory: str) -> bool:
    """Whether ``index`` is the exact flat index that stands in for ``factory`` because it was made
    with no vectors to train ``factory`` on (a new index of a FAISS factory string type)."""
    return factory != DEFAULT_FACTORY and supports_removal(index) and not new_index(index.d, factory).is_trained


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
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:  # k-means: 64 points and 10 iterations per list suffice (bench/ann_1m.py)
            train_sample = min(train_sample, max(IVF_TRAIN_PER_LIST * ivf.nlist, 100_000))
            ivf.cp.niter = 10
        rng = np.random.default_rng(seed)
        sample = vectors if len(vectors) <= train_sample else vectors[np.sort(rng.choice(len(vectors), train_sample, replace=False))]
        index.train(sample)
    apply_params(index, params)  # an HNSW quantizer assigns the vectors at its search depth
    for start in range(0, len(vectors), shard):
        index.add_with_ids(vectors[start:start + shard], np.ascontiguousarray(ids[start:start + shard], np.int64))
    return index


def add(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))


def remove(index: faiss.Index, ids) -> None:
    ids = np.asarray(list(ids), np.int64)
    if len(ids):
        index.remove_ids(ids)


@contextmanager
def threads_for(queries: int):
    """FAISS's OpenMP threads for a search of ``queries`` queries from the calling thread: one for a
    single query, else all. A single query runs on one core whatever the count (FAISS parallelises
    over queries), but with two or more threads it waits at each parallel region for threads that
    other work on the machine keeps from running: with 2 cores shared, one exact query over 1M
    vectors took 123 ms at 2 threads and 31 ms at 1, one over 20,000 took 10 ms against 0.2
    (bench/ann_1m.py). OpenMP keeps the count per calling thread, so this is safe across threads."""
    if queries != 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (q, k), ids (q, k))``, best first; missing neighbours have id -1.

    An IVF index probes only ``nprobe`` lists, which can hold fewer than ``k`` vectors between
    them (a small list, a tuned-down ``nprobe``); those queries are searched again with more
    lists, up to all of them, so that ``k`` hits come back whenever the index holds ``k``.
    A single query runs on one thread (:func:`threads_for`)."""
    with threads_for(len(queries)):
        return _search(index, queries, k)


def _search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    if index.ntotal == 0:
        q = len(queries)
        return np.full((q, k), -np.inf, np.float32), np.full((q, k), -1, np.int64)
    queries = np.ascontiguousarray(queries, np.float32)
    scores, ids = index.search(queries, k)
    short = np.flatnonzero((ids < 0).any(1))
    if len(short):
        ivf = faiss.downcast_index(index)
        if isinstance(ivf, faiss.IndexIVF):  # with its own parameters per call: safe across threads
            nprobe = ivf.nprobe
            while len(short) and nprobe < ivf.nlist:
                nprobe = min(ivf.nlist, nprobe * 4)
                s, i = index.search(queries[short], k, params=faiss.SearchParametersIVF(nprobe=nprobe))
                scores[short], ids[short] = s, i
                short = short[(i < 0).any(1)]
    return scores, ids


def search_all(indexes: Sequence[faiss.Index], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` over several indexes holding disjoint ids, merged best first."""
    results = [search(index, queries, k) for index in indexes if index.ntotal] or [search(indexes[0], queries, k)]
    if len(results) == 1:
        return results[0]
    scores = np.concatenate([r[0] for r in results], axis=1)
    ids = np.concatenate([r[1] for r in results], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """The ids held by an ``IndexIDMap``/``IDMap2`` index, or those in the lists of an IVF index.

    On-disk lists are read with ``pread``, not through the mapping, so that this check does not
    leave the searching process with every list's pages mapped.
    """
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    parts = [np.empty(0, np.int64)]
    if isinstance(invlists, faiss.OnDiskInvertedLists):
        with open(invlists.filename, "rb") as f:
            for no in range(invlists.nlist):
                one = invlists.lists.at(no)
                if one.size:
                    raw = os.pread(f.fileno(), 8 * one.size, one.offset + one.capacity * invlists.code_size)
                    parts.append(np.frombuffer(raw, np.int64))
    else:
        for no in range(invlists.nlist):
            if size := invlists.list_size(no):
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(no), size).copy())
    return np.concatenate(parts)


def save(index: faiss.Index, path: Path) -> None:
    """Write atomically: a crash leaves either the old file or the new one."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load(path: Path, params: str = "", *, mapped: bool = False) -> faiss.Index:
    """Read a FAISS file. On-disk lists are memory-mapped read-only from the ``.ivfdata`` file
    named in it, looked up beside ``path``; only the quantizer and the list offsets enter RAM.

    ``mapped`` also maps flat vector storage (flat, and hnsw's) instead of reading it: a reader
    that will not add to the index opens a 10,000-image flat index in 6 ms instead of 50. Not
    for ``ondisk`` files (FAISS refuses the two mappings together).
    Writers replace the file by renaming, so a mapping never sees a file change under it.
    """
    path = Path(path).absolute()
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP_IFC if mapped else 0)
    for attempt in range(3):
        if not path.is_file():
            raise IndexCorruptError(f"{path}: FAISS file is missing")
        before = path.stat().st_ino
        try:
            with nullcontext() if mapped else _quiet_faiss():
                index = faiss.read_index(str(path), flags)
            apply_params(index, params)
            return index
        except RuntimeError as e:
            if attempt < 2 and path.is_file() and path.stat().st_ino != before:
                continue  # a writer published a new generation (and deleted ours) while we read
            detail = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "unreadable"
            raise IndexCorruptError(f"{path}: truncated or damaged FAISS file ({detail})") from None
    raise AssertionError("unreachable")


def empty_like(path: Path, params: str = "") -> faiss.Index:
    """The on-disk index at ``path`` with empty in-RAM lists: same quantizer and codec, to collect
    vectors added since it was written (merged by :func:`save_ondisk`)."""
    index = load(path, params)
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # now owned by the index
    ivf.ntotal = index.ntotal = 0
    return index


# -- on-disk inverted lists ---------------------------------------------------------------------

def _ondisk_lists(n: int) -> int:
    """About 2 sqrt(n) lists, a power of two, with at least 39 training points per list (so 1 list
    for a handful of vectors). Fewer lists than ivfpq's 4 sqrt(n): k-means and the assignment of
    every vector cost O(n x nlist), and at 10M this halves a build that dominates the run time."""
    nlist = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(max(n, 1)))))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return nlist


def is_ondisk_type(index_type: str) -> bool:
    """``ondisk``, or ``ondisk:CODE`` with another codec for the lists (e.g. ``ondisk:SQfp16``)."""
    return index_type == "ondisk" or index_type.startswith("ondisk:")


def _ondisk_spec(index_type: str, n: int, dim: int) -> IndexSpec:
    code = index_type.partition(":")[2] or "SQ8"
    try:
        faiss.index_factory(dim, f"IVF1,{code}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise InputError(f"--index-type {index_type!r}: {code!r} is not a FAISS IVF codec (try ondisk:SQ8, "
                         "ondisk:SQfp16)") from None
    if n == 0:
        return IndexSpec(index_type, DEFAULT_FACTORY, "", n)  # nothing to train on yet
    nlist = _ondisk_lists(n)
    nprobe = min(nlist, max(ONDISK_MIN_NPROBE, nlist // 128))
    if nlist >= 1024:  # HNSW over the centroids: assigning 10M vectors to 8192 lists exactly takes ~10 min
        return IndexSpec(index_type, f"IVF{nlist}_HNSW32,{code}", f"nprobe={nprobe},quantizer_efSearch={2 * nprobe}", n)
    return IndexSpec(index_type, f"IVF{nlist},{code}", f"nprobe={nprobe}", n)


def is_ondisk(index: faiss.Index) -> bool:
    """Whether ``index`` is an IVF whose lists live in an ``.ivfdata`` file."""
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


def ivfdata_path(index: faiss.Index) -> Path:
    return Path(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename)


@contextmanager
def _quiet_faiss():
    """FAISS's C++ code prints "resizing ..." and "IO_FLAG_ONDISK_SAME_DIR: updating ondisk
    filename ..." with printf, which would land in the middle of ``--json`` output: library code
    prints nothing, so both standard streams go to /dev/null meanwhile (C buffers flushed first)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.fflush(None)
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        yield
    finally:
        libc.fflush(None)
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def train_ondisk(dim: int, factory: str, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], n: int, *,
                 train_sample: int = 0, seed: int = 0, params: str = "") -> faiss.Index:
    """An empty, trained IVF index for ``n`` vectors: trained on a seeded sample of at most
    ``train_sample`` (default: 50 per list, at least 100,000) of the vectors ``chunks()`` yields,
    as ``(ids, vectors)`` pairs, gathered in one pass so that only the sample sits in RAM."""
    index = new_index(dim, factory)
    ivf = faiss.extract_index_ivf(index)
    size = min(n, train_sample or max(50 * ivf.nlist, 100_000))
    keep = np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if size < n else None
    sample, seen = [], 0
    for _, vecs in chunks():
        if keep is None:
            sample.append(vecs)
        else:
            lo, hi = np.searchsorted(keep, [seen, seen + len(vecs)])
            sample.append(vecs[keep[lo:hi] - seen])
        seen += len(vecs)
    ivf.cp.niter = 10  # k-means converges within 10 iterations on these sizes; the default 25 costs 2.5x
    index.train(np.ascontiguousarray(np.concatenate(sample) if sample else np.empty((0, dim), np.float32)))
    apply_params(index, params)
    return index


def save_ondisk(trained: faiss.Index, path: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray]] = (), *,
                also: Sequence[faiss.Index] = (), shard: int = 2_000_000) -> None:
    """Publish an on-disk index at ``path`` (``vectors.faiss``): the lists hold the vectors of
    ``chunks`` plus the lists of the indexes in ``also`` (same quantizer and codes, e.g. the index
    published before and the vectors added since), written to a new ``{stem}.{generation}.ivfdata``
    beside it.

    ``chunks`` are encoded ``shard`` vectors at a time into ``trained`` (only codes in RAM: about
    136 B a vector for SQ8 at 128-d), each shard written to a temporary file, and the shard files
    are then memory-mapped and merged list by list into the new ``.ivfdata``. The new file is
    synced before ``path`` is atomically replaced to point at it (by its bare name, so the
    directory can move), and older generations are deleted only then: a crash at any moment leaves
    the old pair or the new one, and a reader that has mapped the old file keeps it until it closes.
    """
    path = Path(path)
    directory = path.parent
    generation = f"{time.time_ns():x}"
    work = directory / f".{path.stem}.{generation}.build"
    data = directory / f"{path.stem}.{generation}.ivfdata"
    ivf = faiss.extract_index_ivf(trained)
    work.mkdir()
    try:
        shard_files = []

        def flush() -> None:
            shard_files.append(work / f"shard{len(shard_files)}.faiss")
            faiss.write_index(trained, str(shard_files[-1]))
            trained.reset()  # empties the lists; the quantizer and the trained codec stay

        trained.reset()
        for ids, vecs in chunks:
            trained.add_with_ids(np.ascontiguousarray(vecs, np.float32), np.ascontiguousarray(ids, np.int64))
            if trained.ntotal >= shard:
                flush()
        if trained.ntotal:
            flush()
        with _quiet_faiss():
            shards = [faiss.read_index(str(f), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) for f in shard_files]
        lists = faiss.InvertedListsPtrVector()
        for other in [*shards, *also]:
            lists.push_back(faiss.extract_index_ivf(other).invlists)
        invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data))
        with _quiet_faiss():
            ntotal = invlists.merge_from_multiple(lists.data(), lists.size(), False, False)
        invlists.filename = data.name  # found beside path when read (IO_FLAG_ONDISK_SAME_DIR)
        ivf.replace_invlists(invlists, True)
        invlists.this.disown()
        ivf.ntotal = trained.ntotal = ntotal
        del shards
        with open(data, "rb+") as f:  # the lists were written through a shared mapping
            os.fsync(f.fileno())
        save(trained, path)
        _fsync_dir(directory)
    except BaseException:
        data.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    remove_stale_generations(path, data.name)


def remove_stale_generations(path: Path, keep: str | None = None) -> None:
    """Delete the ``.ivfdata`` generations other than ``keep`` (a bare file name) beside ``path``,
    and build folders left by a killed save. Only a writer holding the index's lock may call this,
    after publishing the file that refers to ``keep``."""
    path = Path(path)
    for f in path.parent.glob(f"{path.stem}.*.ivfdata"):
        if f.name != keep:
            f.unlink(missing_ok=True)
    for d in path.parent.glob(f".{path.stem}.*.build"):
        shutil.rmtree(d, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
