"""Retrieval metrics over labelled embeddings, in plain numpy.

Definitions follow Musgrave et al., "A Metric Learning Reality Check" (2020). For each query,
neighbours are ranked by cosine similarity (ties by index), the query itself excluded in
leave-one-out mode, and R is the number of gallery items sharing the query's label:

- Precision@1: the nearest neighbour has the query's label.
- Recall@K: at least one of the K nearest has the query's label.
- mAP@R: mean over ranks i <= R of Precision@i at the ranks that hold a match, divided by R.
- k-NN accuracy: the similarity-weighted vote of the k nearest (as `imgembed classify`) is right.

Queries with R = 0 are left out of every metric. Similarities are computed ``chunk`` queries at
a time, so memory is O(chunk x gallery), never gallery x gallery.
"""

from __future__ import annotations

import numpy as np

from ..config import CLASSIFY_K
from .knn import vote


def retrieval_metrics(queries: np.ndarray, query_labels, gallery: np.ndarray | None = None,
                      gallery_labels=None, *, ks=(1, 5, 10), knn_k: int = CLASSIFY_K, chunk: int = 256,
                      details: list | None = None) -> dict:
    """Metrics of ``queries`` (q, d) against ``gallery`` (g, d); without a gallery, leave-one-out
    within ``queries``. Labels are any hashable values. Pass a list as ``details`` to receive,
    per counted query, ``(query index, AP@R, k-NN predicted label, nearest gallery indices,
    their similarities)``, for reports."""
    loo = gallery is None
    if loo:
        gallery, gallery_labels = queries, query_labels
    q_lab, g_lab = np.asarray(query_labels), np.asarray(gallery_labels)
    counts = {lab: int(n) for lab, n in zip(*np.unique(g_lab, return_counts=True))}
    r_of = np.array([counts.get(lab, 0) - (1 if loo else 0) for lab in q_lab])
    depth = int(max(r_of.max(initial=0), max(ks), knn_k))
    depth = min(depth, len(g_lab) - (1 if loo else 0))
    sums = {"precision_at_1": 0.0, "map_at_r": 0.0, "knn_accuracy": 0.0, **{f"recall_at_{k}": 0.0 for k in ks}}
    counted = 0
    for start in range(0, len(q_lab), chunk):
        sims = queries[start:start + chunk] @ gallery.T
        if loo:
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf
        top = np.argpartition(-sims, depth - 1, axis=1)[:, :depth] if depth < sims.shape[1] else \
            np.tile(np.arange(sims.shape[1]), (len(sims), 1))
        order = np.lexsort((top, -np.take_along_axis(sims, top, 1)), axis=1)
        top = np.take_along_axis(top, order, 1)
        for row, neighbours in enumerate(top):
            i = start + row
            r = r_of[i]
            if r <= 0:
                continue
            counted += 1
            hits = g_lab[neighbours] == q_lab[i]
            sums["precision_at_1"] += hits[0]
            for k in ks:
                sums[f"recall_at_{k}"] += hits[:k].any()
            first_r = hits[:r]
            precision_at_i = np.cumsum(first_r) / np.arange(1, r + 1)
            sums["map_at_r"] += float((precision_at_i * first_r).sum() / r)
            nn = neighbours[:knn_k]
            predicted = vote(list(g_lab[nn]), sims[row, nn]).label
            sums["knn_accuracy"] += predicted == q_lab[i]
            if details is not None:
                ap = float((precision_at_i * first_r).sum() / r)
                details.append((i, ap, predicted, neighbours[:max(ks)], sims[row, neighbours[:max(ks)]]))
    out = {k: float(v / counted) if counted else 0.0 for k, v in sums.items()}
    out["queries"] = counted
    return out
