"""Retrieval metrics against a brute-force computation over the full similarity matrix."""

import numpy as np
import pytest

from imgembed.collection import knn
from imgembed.collection.metrics import retrieval_metrics


def brute(q, ql, g, gl, loo, ks=(1, 5, 10), knn_k=5):
    out = {"precision_at_1": [], "map_at_r": [], "knn_accuracy": [], **{f"recall_at_{k}": [] for k in ks}}
    for i in range(len(q)):
        cands = [j for j in range(len(g)) if not (loo and j == i)]
        ranked = sorted(cands, key=lambda j: (-float(q[i] @ g[j]), j))
        rel = [gl[j] == ql[i] for j in ranked]
        r = sum(rel)
        if r == 0:
            continue
        out["precision_at_1"].append(rel[0])
        for k in ks:
            out[f"recall_at_{k}"].append(any(rel[:k]))
        ap = sum(sum(rel[:i + 1]) / (i + 1) for i in range(r) if rel[i]) / r
        out["map_at_r"].append(ap)
        nn = ranked[:knn_k]
        out["knn_accuracy"].append(knn.vote([gl[j] for j in nn], [float(q[i] @ g[j]) for j in nn]).label == ql[i])
    return {k: float(np.mean(v)) for k, v in out.items()}


def data(seed, n, classes, d=6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, d))
    v = centres[labels] + rng.standard_normal((n, d)) * 1.2
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("chunk", [7, 1000])
def test_leave_one_out_matches_brute_force(chunk):
    v, labels = data(0, 60, 5)
    labels[0] = 99  # a class of one: no relevant item, left out
    got = retrieval_metrics(v, labels, chunk=chunk)
    want = brute(v, labels, v, labels, loo=True)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["queries"] == 59


def test_query_gallery_matches_brute_force():
    q, ql = data(1, 25, 4)
    g, gl = data(2, 40, 4)
    got = retrieval_metrics(q, ql, g, gl, chunk=8)
    want = brute(q, ql, g, gl, loo=False)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_perfect_and_hand_worked_cases():
    v = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    perfect = retrieval_metrics(v, ["a", "a", "b", "b"])
    assert perfect["map_at_r"] == 1.0 and perfect["precision_at_1"] == 1.0
    # Query 0 ranks (1: b, 2: a): R = 1, first neighbour wrong -> AP 0; P@1 0; recall@5 1.
    w = np.array([[1, 0], [0.6, 0.8], [0.9, 0.436]], np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    m = retrieval_metrics(w[:1], ["a"], w[1:], ["a", "b"], ks=(1, 2))
    assert (m["precision_at_1"], m["map_at_r"], m["recall_at_2"]) == (0.0, 0.0, 1.0)
