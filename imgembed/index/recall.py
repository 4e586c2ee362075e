"""Approximate search that checks itself: Recall@10 measured on the collection's own vectors.

Search parameters that suit one collection are wrong for another: the ``nprobe`` that finds 95%
of the true neighbours among well separated clusters finds 85% where neighbourhoods are crowded.
So whenever an approximate index is built or has doubled in size, :func:`tune` takes a seeded
sample of 500 stored vectors as queries (:func:`check_queries`), finds their exact 10 nearest
neighbours by brute force over every stored vector, and walks the search-time knobs from cheap
to dear (``efSearch`` for HNSW; for IVF ``nprobe``, with ``quantizer_efSearch`` beside it where an
HNSW graph finds the lists, then the re-ranking depth ``k_factor_rf`` up to 1,024) until
Recall@10 reaches the target plus :data:`MARGIN`. It keeps the fastest setting that does (else
the fastest that reaches the bare target), among those within the latency budget: a twentieth
(:data:`BUDGET_SHARE`) of an exact search's time for one query on one core, and never less than
:data:`BUDGET_FLOOR_MS` (below that nobody waits). Single queries are timed as the index runs
them, on one FAISS thread (:func:`vectors.threads_for`). The result, met or not and why, is a
:class:`RecallCheck` that the manifest records and ``imgembed info`` shows.

The budget was a tenth until bench/ann_1m.py measured 1M-vector crowded and mixed collections:
``auto``'s index (4-bit PQ codes re-ranked with 16-bit floats) reaches the aim at well over 20x
an exact search there, so a twentieth leaves room without cutting recall; at 1M the floor
(2 ms, about 1/15 of one core's exact scan) is the binding limit.

The queries must behave like a user's new image, which is not in the index. For IVF they are
the stored vectors themselves, each left out of its own results and truth: a vector's presence
in its own list does not help find its neighbours, and on 100,000 crowded 128-d vectors this
leave-one-out recall matched that of held-out queries within 0.005 at three settings (0.840 /
0.957 / 0.963 against 0.845 / 0.958 / 0.963), where vectors moved off themselves read 0.969 /
0.976 / 0.981. An HNSW graph, though, leads straight to a stored vector and its linked
neighbours (stored queries read 0.99 where held-out ones got 0.83, 12,000 uniform 32-d
vectors), so for HNSW each is moved off itself by twice its distance to its nearest neighbour
(:func:`fresh_queries`): within 0.015 of held-out queries on uniform 128-d data and pessimistic
on clustered data at 30,000 vectors, though still optimistic on uniform data at 100,000
(0.67 against 0.52, far below any target). A pessimistic check costs speed; an optimistic one
costs the user's neighbours.

Needs numpy and FAISS only (and :func:`vectors.threads_for`, to time single queries as they run).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Iterable

import faiss
import numpy as np

from .vectors import threads_for

DEFAULT_TARGET = 0.95
K = 10
SAMPLE = 500  # queries: Recall@10 to about +-0.01
LATENCY_QUERIES = 50  # of them, timed one at a time as a user's query runs
BUDGET_SHARE = 0.05  # of one exact query's time (bench/ann_1m.py)
BUDGET_FLOOR_MS = 2.0
PLATEAU = 0.002  # recall gained by doubling a knob below which it has stopped rising
# Tuning aims this far above the target: 500 queries measure recall to about +-0.01, and the
# cheapest setting that clears the target by a hair falls short of it on other queries.
MARGIN = 0.02


@dataclass(frozen=True)
class RecallCheck:
    target: float
    recall: float  # Recall@10 at ``params``
    params: str
    met: bool
    ms_per_query: float  # one query at a time, at ``params``
    exact_ms_per_query: float  # the same queries by brute force over every vector
    budget_ms: float
    queries: int
    n: int  # vectors in the index when measured
    note: str = ""  # why the target was not met

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "RecallCheck | None":
        return cls(**d) if d else None

    def describe(self) -> str:
        verdict = "target met" if self.met else f"target NOT met: {self.note}"
        return (f"Recall@10 {self.recall:.3f} on {self.queries} queries drawn from its own vectors (target {self.target:.2f}; "
                f"{verdict}); {self.ms_per_query:.2f} ms a query against {self.exact_ms_per_query:.2f} ms exact, "
                f"at {self.n:,} vectors")


def _share() -> str:
    """The budget's share of an exact search, in words: "1/20"."""
    return f"1/{round(1 / BUDGET_SHARE)}" if BUDGET_SHARE < 1 else f"{BUDGET_SHARE:g}x"


def tunable(factory: str) -> bool:
    """Whether searches of this FAISS factory string are approximate (there is recall to check)."""
    return "IVF" in factory or "HNSW" in factory


STEP = 2.0  # a query's distance from the stored vector it was made from, in nearest-neighbour distances


def fresh_queries(index: faiss.Index, sample: np.ndarray, seed: int = 0) -> np.ndarray:
    """``sample`` (stored unit vectors) each moved by :data:`STEP` times its distance to its
    nearest other stored vector (as ``index`` finds it), in a random direction, and
    renormalised: queries that are not in the index but sit where the collection's vectors do."""
    scores, _ = index.search(np.ascontiguousarray(sample, np.float32), 2)
    nearest = np.where(np.isfinite(scores[:, 1]), scores[:, 1], scores[:, 0])
    distance = np.sqrt(np.clip(2.0 - 2.0 * nearest, 1e-8, 4.0))[:, None]
    direction = np.random.default_rng(seed).standard_normal(sample.shape).astype(np.float32)
    direction -= np.sum(direction * sample, axis=1, keepdims=True) * sample  # along the sphere
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    moved = sample + STEP * distance * direction
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)


def check_queries(index: faiss.Index, sample: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The queries of a check and the stored ids to leave out of their results: the stored
    vectors themselves (left out) for IVF, moved copies (nothing to leave out) for graphs."""
    if faiss.try_extract_index_ivf(index) is not None:
        return np.ascontiguousarray(sample, np.float32), np.asarray(ids, np.int64)
    return fresh_queries(index, sample), np.full(len(sample), -1, np.int64)


def exact_neighbours(queries: np.ndarray, query_ids: np.ndarray,
                     chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int = K) -> tuple[np.ndarray, float]:
    """Each query's ``k`` nearest stored ids by inner product (q, k), from
    ``(ids, vectors)`` chunks of every stored vector, leaving out the query's own id where
    ``query_ids`` names one (-1: none); and the milliseconds one query's exact search takes
    (estimated from a single-query scan of each chunk on one core: ``einsum``, not BLAS, whose
    threads wait for each other on a loaded machine and made a 1M scan read 250-1,200 ms instead
    of 31; an inflated exact time would loosen the latency budget)."""
    best_scores = np.full((len(queries), k + 1), -np.inf, np.float32)
    best_ids = np.full((len(queries), k + 1), -1, np.int64)
    single = 0.0
    for ids, vecs in chunks:
        start = time.perf_counter()
        _ = np.einsum("ij,j->i", vecs, queries[0])
        single += time.perf_counter() - start
        scores = queries @ vecs.T
        m = min(k + 1, scores.shape[1])
        top = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        all_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        all_ids = np.concatenate([best_ids, ids[top]], axis=1)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k + 1]
        best_scores, best_ids = np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)
    return _drop_self(best_ids, query_ids, k), single * 1e3


def _drop_self(ids: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(ids), k), -1, np.int64)
    for row, (found, own) in enumerate(zip(ids, query_ids)):
        kept = found[(found != own) & (found >= 0)][:k]
        out[row, :len(kept)] = kept
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


RERANK_DEPTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # k_factor_rf, one row each


def _quantizer_is_graph(ivf) -> bool:
    return isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)


def _ladder(index: faiss.Index, factory: str) -> list[list[str]]:
    """Settings to try, as rows of increasing cost: within a row the first knob doubles; each row
    has a deeper re-ranking than the last (IVF with ``Refine``), else a single row.

    For IVF the first knob is ``nprobe``; an HNSW graph over the centroids (``IVF{n}_HNSW32``)
    searches them at ``quantizer_efSearch`` twice ``nprobe`` (at least 64), so that the lists it
    probes are the nearest ones. Re-ranking reads ``k_factor_rf`` x k candidates by their codes:
    4-bit PQ codes order crowded neighbours so loosely that the true 10 can sit among the first
    2,560 (bench/ann_1m.py), hence rows up to 1,024."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nprobes = [2 ** i for i in range(int(np.log2(ivf.nlist)) + 1)]
        if ivf.nlist not in nprobes:
            nprobes.append(ivf.nlist)
        probes = [f"nprobe={p}" + (f",quantizer_efSearch={max(64, 2 * p)}" if _quantizer_is_graph(ivf) else "")
                  for p in nprobes]
        if "Refine" in factory:
            return [[f"{p},k_factor_rf={r}" for p in probes] for r in RERANK_DEPTHS]
        return [probes]
    if "HNSW" in factory:
        return [[f"efSearch={e}" for e in (16, 32, 64, 128, 256, 512, 1024, 2048)]]
    return [[""]]


def tune(index: faiss.Index, factory: str, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray,
         exact_ms: float, n: int, *, target: float = DEFAULT_TARGET, depth: int = K) -> RecallCheck:
    """Find the fastest setting of ``index`` whose Recall@10 on ``queries`` (exact neighbours
    ``truth``; ``query_ids`` the stored ids to leave out of their hits, -1 for none) reaches
    ``target`` within the latency budget, and leave ``index`` set to it; else the setting of best
    recall within the budget.

    ``depth`` is how many of the index's hits a search keeps: 10, or more for an index whose
    hits are re-scored exactly with the stored vectors (``ondisk``), where a true neighbour
    counts as found when it is among them.
    """
    def search(ix, q, k):
        with threads_for(len(q)):  # as the index's own searches run: one query, one thread
            return ix.search(np.ascontiguousarray(q, np.float32), k)[1]

    budget = max(BUDGET_SHARE * exact_ms, BUDGET_FLOOR_MS)
    aim = min(1.0, target + MARGIN)
    space = faiss.ParameterSpace()
    measured: dict[str, tuple[float, float]] = {}  # params -> (recall, ms)

    def measure(params: str) -> tuple[float, float]:
        if params not in measured:
            if params:
                space.set_index_parameters(index, params)
            recall = recall_at(_drop_self(search(index, queries, depth + 1), query_ids, depth), truth)

            def median_ms() -> float:
                times = []
                for q in queries[:LATENCY_QUERIES]:  # the median: robust to another process's bursts
                    start = time.perf_counter()
                    search(index, q[None, :], depth + 1)
                    times.append(time.perf_counter() - start)
                return float(np.median(times)) * 1e3

            ms = median_ms()
            if ms > budget:  # timed again before it counts as over: a loaded machine has longer bursts
                ms = min(ms, median_ms())
            measured[params] = recall, ms
        return measured[params]

    limit = None  # a row met the target at this position: later rows only try cheaper first knobs
    over_budget = False  # a row was cut short by the budget, not by recall that stopped rising
    for row in _ladder(index, factory):
        last = -1.0
        for position, params in enumerate(row[:limit]):
            recall, ms = measure(params)
            if recall >= aim:
                if ms <= budget:
                    limit = position
                break
            if ms > budget:
                over_budget = True
                break
            if position and recall - last < PLATEAU:
                break  # stopped rising: a deeper re-ranking (next row) may still help
            last = recall
        if limit == 0:
            break  # the cheapest first knob met it: deeper re-ranking only costs more
    within = {p: v for p, v in measured.items() if v[1] <= budget}
    meeting = {p: v for p, v in within.items() if v[0] >= aim} or {p: v for p, v in within.items() if v[0] >= target}
    note = ""
    if meeting:
        params = min(meeting, key=lambda p: meeting[p][1])
    elif within:
        params = max(within, key=lambda p: (within[p][0], -within[p][1]))
        best = max(v[0] for v in measured.values())
        if best >= target or over_budget:
            note = (f"reaching it takes more than the latency budget of {budget:.1f} ms a query ({_share()} of exact "
                    f"search); the collection's neighbourhoods are too crowded for this index: rebuild as flat")
        elif faiss.try_extract_index_ivf(index) is not None:
            note = (f"recall stops rising at {best:.3f}: this index's codes are too coarse for the collection's "
                    "neighbourhoods; rebuild it (today's ivfpq re-ranks with 16-bit floats), or as hnsw or flat "
                    "(or ondisk:SQfp16)")
        else:
            note = f"recall stops rising at {best:.3f} on this collection; rebuild as flat"
    else:
        params = min(measured, key=lambda p: measured[p][1])
        note = (f"even its cheapest setting takes {measured[params][1]:.1f} ms a query, over the latency budget of "
                f"{budget:.1f} ms ({_share()} of exact search): at this size, flat is faster")
    if params:
        space.set_index_parameters(index, params)
    recall, ms = measured[params]
    return RecallCheck(target, round(recall, 4), params, recall >= target and ms <= budget, round(ms, 3),
                       round(exact_ms, 3), round(budget, 3), len(queries), n, note)
