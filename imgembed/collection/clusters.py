"""Clusters of a collection's vectors without labels (numpy and FAISS only).

Communities of the neighbour graph (Louvain: Blondel et al., "Fast unfolding of communities in
large networks", 2008): each image is joined to its ``k`` nearest others, weighted by their
cosine (clipped at 0) and made symmetric, and the graph is split where it is sparse by
maximising modularity at ``resolution`` (higher: more, smaller clusters). The number of clusters
follows from the graph; nothing has to be guessed beforehand, and, unlike a cosine threshold,
the graph does not depend on how close a collection's images are on the whole (drawings of one
artist all lie close; holiday photos do not). On bench/clusters.py's labelled sets with the
labels hidden it agreed with the classes better than k-means with k by silhouette (which chose
2 clusters of 10 classes on Fashion-MNIST), average-linkage at any one cosine threshold, Ward's
linkage or HDBSCAN. ``K`` and ``RESOLUTION`` were chosen on the tuning sets, whole and drawn into
uneven and small subsets, and confirmed on held-out ones (docs/quality.md, "Clusters"). The
resolution stays at 1: above it, cutting a compact group that holds half of a folder into two
random halves raises modularity, so a folder that is mostly one thing would be split at random.
Small folders of many small classes pay for it: their classes merge more often (``--resolution``
splits finer).

Deterministic: the nodes are visited in an order drawn from ``seed``. Memory is bounded: above
``sample`` vectors a seeded sample of that many is clustered and every other vector joins the
cluster whose mean direction is nearest to it (FAISS), so the graph never holds more than
``sample x k`` edges. One or two vectors form one cluster (too few to split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import CLUSTER_K as K
from ..config import CLUSTER_RESOLUTION as RESOLUTION
from ..config import CLUSTER_SAMPLE as SAMPLE
from ..errors import InputError

MAX_PASSES = 100  # local-moving passes per level; each strictly raises modularity, so this is a safety net
ASSIGN_BATCH = 65_536  # vectors assigned to their nearest cluster per FAISS call


@dataclass(frozen=True)
class Clustering:
    """``labels`` (n,) int64: each vector's cluster, 0 the largest (ties: the one holding the
    earliest vector); ``medoids`` (c,) int64: per cluster, the position of the member with the
    highest cosine to the cluster's mean direction (its representative); ``cohesion`` (c,)
    float64: the members' mean cosine to that direction (1 when they are all alike);
    ``centrality`` (n,) float64: each vector's own cosine to its cluster's direction."""

    labels: np.ndarray
    medoids: np.ndarray
    cohesion: np.ndarray
    centrality: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        """(c,) int64 members per cluster, largest first."""
        return np.bincount(self.labels, minlength=len(self.medoids))

    def members(self, c: int) -> np.ndarray:
        """Positions of cluster ``c``'s members, the most central first (ties: earliest first)."""
        inside = np.flatnonzero(self.labels == c)
        return inside[np.lexsort((inside, -self.centrality[inside]))]


def cluster(vectors: np.ndarray, *, k: int = K, resolution: float = RESOLUTION, sample: int = SAMPLE,
            seed: int = 0) -> Clustering:
    """Cluster (n, d) float32 unit ``vectors`` (see the module docstring): communities of the
    nearest-neighbour graph (``k`` neighbours each, fewer in a small collection:
    :func:`neighbours_for`) at ``resolution``; above ``sample`` vectors a sample is
    clustered and the rest assigned by nearest mean direction. Raises :class:`InputError` for
    no vectors or bad parameters."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InputError("nothing to cluster: no vectors")
    if k < 1 or resolution <= 0 or sample < 3:
        raise InputError(f"clusters need k >= 1, resolution > 0 and sample >= 3 (got {k}, {resolution}, {sample})")
    n = len(vectors)
    if n <= 2:
        return _finish(vectors, np.zeros(n, np.int64))
    rng = np.random.default_rng(seed)
    if n > sample:
        chosen = np.sort(rng.choice(n, sample, replace=False))
        part = communities(*knn_graph(vectors[chosen], neighbours_for(sample, k)), resolution=resolution, rng=rng)
        labels = assign(vectors, _directions(vectors[chosen], part))
        labels[chosen] = part  # the sample keeps its communities
    else:
        labels = communities(*knn_graph(vectors, neighbours_for(n, k)), resolution=resolution, rng=rng)
    return _finish(vectors, labels)


def neighbours_for(n: int, k: int = K) -> int:
    """Neighbours per vector in the graph of ``n`` vectors: ``k``, or fewer in a small collection,
    about ``sqrt(n)`` (at least 3, at most ``n - 1``). A vector can only join a cluster that
    holds a large enough share of its neighbours, so ``k`` must stay below a cluster's size; on
    bench/clusters.py's small subsets (40 to 96 images of 4 to 8 classes) a fixed 20 agreed with
    the classes far less than this rule, and a fixed 5 somewhat more (not adopted: 5
    neighbours at every size lost on the uneven subsets, mean ARI 0.36 against 0.46)."""
    return max(1, min(k, n - 1, max(3, round(float(np.sqrt(n))))))


def knn_graph(vectors: np.ndarray, k: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, edges (m, 2) int64, weights (m,) float64)``: each vector joined to its ``min(k, n - 1)``
    nearest others (exact inner product), each undirected edge once (``a < b``) with the larger
    of its two cosines, clipped to a small positive floor."""
    import faiss

    n = len(vectors)
    k = min(k, n - 1)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    sims, nbrs = index.search(vectors, k + 1)
    rows = np.repeat(np.arange(n), k + 1).reshape(n, k + 1)
    own = nbrs == rows
    # drop each row's own entry (or, where identical vectors hid it, the farthest neighbour)
    drop = np.where(own.any(1), own.argmax(1), k)
    keep = np.ones_like(own)
    keep[np.arange(n), drop] = False
    a, b, w = rows[keep], nbrs[keep], sims[keep].astype(np.float64)
    valid = b >= 0
    a, b, w = a[valid], b[valid], w[valid]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((-w, hi, lo))  # per pair, the larger cosine first
    lo, hi, w = lo[order], hi[order], w[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return n, np.column_stack([lo[first], hi[first]]), np.maximum(w[first], 1e-6)


def communities(n: int, edges: np.ndarray, weights: np.ndarray, *, resolution: float = RESOLUTION,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """(n,) int64 community of each node of the weighted undirected graph (``edges`` (m, 2),
    ``weights`` (m,)) by Louvain at ``resolution``: nodes move to the neighbouring community
    that raises modularity most, then communities become nodes, until nothing moves."""
    rng = rng if rng is not None else np.random.default_rng(0)
    adjacency: list[dict[int, float]] = [{} for _ in range(n)]
    for (a, b), w in zip(edges.tolist(), weights.tolist()):
        if a == b:
            continue
        adjacency[a][b] = adjacency[a].get(b, 0.0) + w
        adjacency[b][a] = adjacency[b].get(a, 0.0) + w
    loops = [0.0] * n
    partition = np.arange(n)
    while True:
        moved, level = _one_level(adjacency, loops, resolution, rng)
        if not moved:
            break
        partition = level[partition]
        adjacency, loops = _aggregate(adjacency, loops, level)
        if len(adjacency) == 1:
            break
    return partition.astype(np.int64)


def _one_level(adjacency: list[dict[int, float]], loops: list[float], resolution: float,
               rng: np.random.Generator) -> tuple[bool, np.ndarray]:
    """Local moving on one level: (whether any node moved, (N,) community of each node, 0..c-1)."""
    size = len(adjacency)
    degree = [sum(nb.values()) + 2 * loop for nb, loop in zip(adjacency, loops)]
    two_m = sum(degree)
    community = list(range(size))
    if two_m <= 0:
        return False, np.arange(size)
    total = list(degree)
    eps = 1e-12 * two_m
    moved_any = False
    order = rng.permutation(size).tolist()
    for _ in range(MAX_PASSES):
        moved = False
        for i in order:
            own, ki = community[i], degree[i]
            links: dict[int, float] = {}
            for j, w in adjacency[i].items():
                c = community[j]
                links[c] = links.get(c, 0.0) + w
            total[own] -= ki
            scale = resolution * ki / two_m
            best, best_gain = own, links.get(own, 0.0) - scale * total[own]
            for c, w in links.items():
                gain = w - scale * total[c]
                if gain > best_gain + eps:
                    best, best_gain = c, gain
            total[best] += ki
            if best != own:
                community[i] = best
                moved = moved_any = True
        if not moved:
            break
    _, renumbered = np.unique(np.asarray(community), return_inverse=True)
    return moved_any, renumbered.astype(np.int64)


def _aggregate(adjacency: list[dict[int, float]], loops: list[float],
               level: np.ndarray) -> tuple[list[dict[int, float]], list[float]]:
    """The graph of communities: edge weights summed, edges inside a community become its loop."""
    count = int(level.max()) + 1
    out: list[dict[int, float]] = [{} for _ in range(count)]
    out_loops = [0.0] * count
    for i, nb in enumerate(adjacency):
        ci = int(level[i])
        out_loops[ci] += loops[i]
        for j, w in nb.items():
            cj = int(level[j])
            if cj == ci:
                out_loops[ci] += w / 2  # each inner edge is seen from both ends
            else:
                out[ci][cj] = out[ci].get(cj, 0.0) + w
    return out, out_loops


def modularity(n: int, edges: np.ndarray, weights: np.ndarray, labels: np.ndarray,
               resolution: float = RESOLUTION) -> float:
    """Newman's modularity of ``labels`` on the graph, at ``resolution`` (what Louvain raises)."""
    two_m = 2 * float(weights.sum())
    degree = np.bincount(edges.ravel(), np.repeat(weights, 2) if len(weights) else None, minlength=n)
    inner = float(weights[labels[edges[:, 0]] == labels[edges[:, 1]]].sum())
    totals = np.bincount(labels, degree)
    return 2 * inner / two_m - resolution * float((totals ** 2).sum()) / two_m ** 2


def _directions(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(c, d) float32 unit mean direction of each cluster."""
    sums = np.zeros((int(labels.max()) + 1, vectors.shape[1]), np.float64)
    np.add.at(sums, labels, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1)).astype(np.float32)


def assign(vectors: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(n,) int64: for each vector, the cluster whose unit mean direction (``(c, d)``) is nearest."""
    import faiss

    index = faiss.IndexFlatIP(directions.shape[1])
    index.add(np.ascontiguousarray(directions, np.float32))
    out = np.empty(len(vectors), np.int64)
    for start in range(0, len(vectors), ASSIGN_BATCH):
        out[start:start + ASSIGN_BATCH] = index.search(vectors[start:start + ASSIGN_BATCH], 1)[1][:, 0]
    return out


def _finish(vectors: np.ndarray, labels: np.ndarray) -> Clustering:
    """Renumber the clusters largest first; each one's medoid and cohesion."""
    _, labels = np.unique(labels, return_inverse=True)
    sizes = np.bincount(labels)
    first = np.full(len(sizes), len(labels))
    np.minimum.at(first, labels, np.arange(len(labels)))
    rank = np.empty(len(sizes), np.int64)
    rank[np.lexsort((first, -sizes))] = np.arange(len(sizes))
    labels = rank[labels].astype(np.int64)
    directions = _directions(vectors, labels)
    cosine = np.einsum("nd,nd->n", vectors, directions[labels]).astype(np.float64)
    cohesion = np.bincount(labels, cosine) / np.bincount(labels)
    order = np.lexsort((np.arange(len(labels)), -cosine, labels))  # per cluster: most central first, then earliest
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    medoids = order[starts].astype(np.int64)
    return Clustering(labels, medoids, cohesion, cosine)
