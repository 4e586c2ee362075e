"""Sorting an inbox into a labelled collection from the vectors of both (numpy only).

An image's own neighbours are a poor guide when the inbox differs from the collection as a
whole (another camera, another artist's style, another scanner): its nearest labelled images
are then those that share its style, whatever they show. The inbox images together say more
than each alone, in two ways used here:

1. *The inbox's own style taken out.* What all inbox images share and the collection does not
   (the style, the lighting, the background) is, to first order, a shift ``s`` of the inbox's
   mean. It cannot simply be the difference of the two means: an inbox of one class differs
   from the collection's mean by that class too, and subtracting it would erase what the images
   show. So ``s = mean(inbox) - sum_c p_c m_c``, the inbox's mean less the mean its class
   proportions ``p`` would give in the collection's style (``m_c`` the class means), with ``p``
   from the per-image vote. (Re-estimating ``p`` from the labels proposed, round after round,
   feeds on itself: a class that gains share pulls the shift towards it and gains more; on one
   held-out task five rounds collapsed accuracy from 0.47 to 0.21.) Both sides are then centred
   (the collection on the mean of its class means, the inbox on that plus ``s``) and
   re-normalised.
2. *Labels spread over the joint neighbour graph* (label propagation, Zhou et al., 2004): a
   graph of each centred image's ``k`` nearest others, labelled and inbox together, with
   ``W_ij = max(cos, 0) ** GAMMA`` made symmetric; scores ``F = (1 - a) (I - a S)^-1 Y`` with
   ``S = D^-1/2 W D^-1/2`` and ``Y`` the labelled images' one-hot rows, each class's column
   divided by its size (so that big classes do not flood the graph). An inbox image reached by
   a class through other inbox images of its own style gets that class even when no labelled
   image is among its own neighbours.

The proposal for an inbox image is its best class by ``F``; its confidence is that class's
share of its row of ``F`` (in [1/classes, 1]), so a threshold on it trades coverage for
precision the way ``imgembed classify``'s vote share does. ``ALPHA``, ``K``, ``GAMMA`` and the
default threshold were chosen on the tuning tasks of bench/sort.py and confirmed on held-out
ones (docs/quality.md, "Sorting an inbox").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import CLASSIFY_K

K = 10  # neighbours per image in the joint graph (bench/sort.py, tuning tasks: 5 and 20 were worse)
ALPHA = 0.5  # how far labels spread: 0 keeps them where they are, 1 floods the graph (0.8-0.99 worse)
GAMMA = 3.0  # the edge weight's power of the cosine: higher trusts the nearest neighbours more (1 worse)
SHIFT_ROUNDS = 1  # estimates of the inbox's style shift; more feed back on themselves (bench/sort.py)
ITERATIONS = 30  # of F <- a S F + (1 - a) Y; the spread converges geometrically with a


@dataclass(frozen=True)
class Proposals:
    """Per inbox image: ``best`` (a class position), ``confidence`` (its share of the image's
    scores) and ``scores`` (inbox images x classes)."""

    best: np.ndarray
    confidence: np.ndarray
    scores: np.ndarray


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def knn_graph(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by cosine (exact, in blocks): (positions, cosines)."""
    n = len(vectors)
    k = min(k, n - 1)
    nb = np.empty((n, k), np.int64)
    cs = np.empty((n, k), np.float32)
    for lo in range(0, n, 2048):
        sims = vectors[lo:lo + 2048] @ vectors.T
        sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        nb[lo:lo + 2048] = part
        cs[lo:lo + 2048] = np.take_along_axis(sims, part, 1)
    return nb, cs


def propose(labelled: np.ndarray, codes: np.ndarray, classes: int, inbox: np.ndarray, *, k: int = K,
            alpha: float = ALPHA, gamma: float = GAMMA, rounds: int = SHIFT_ROUNDS) -> Proposals:
    """Labels for ``inbox`` (m, d) from ``labelled`` (n, d) unit vectors with class positions
    ``codes`` (n,) in ``range(classes)``: the style shift estimated and taken out (``rounds`` of
    it; 0 compares the vectors as they are), then labels spread over the joint graph."""
    if rounds == 0:
        return propagate(labelled, codes, classes, inbox, k=k, alpha=alpha, gamma=gamma)
    means = np.stack([labelled[codes == c].mean(0) for c in range(classes)])
    centre = means.mean(0)
    centred = _unit(labelled - centre)
    share = np.bincount(nearest(labelled, codes, classes, inbox, CLASSIFY_K).best, minlength=classes) / len(inbox)
    for _ in range(rounds):
        shift = inbox.mean(0) - share @ means
        found = propagate(centred, codes, classes, _unit(inbox - shift - centre), k=k, alpha=alpha, gamma=gamma)
        share = np.bincount(found.best, minlength=classes) / len(inbox)
    return found


def propagate(labelled: np.ndarray, codes: np.ndarray, classes: int, inbox: np.ndarray, *, k: int = K,
              alpha: float = ALPHA, gamma: float = GAMMA, iterations: int = ITERATIONS) -> Proposals:
    """Labels spread from ``labelled`` to ``inbox`` over their joint k-NN graph, the vectors
    compared as given."""
    joint = np.concatenate([labelled, inbox]).astype(np.float32)
    n, size = len(labelled), len(labelled) + len(inbox)
    src, dst, weight = _symmetric_edges(*knn_graph(joint, k), gamma)
    seed = np.zeros((size, classes))
    seed[np.arange(n), codes] = 1.0
    seed[:n] /= np.maximum(seed[:n].sum(0), 1.0)
    order = np.argsort(dst, kind="stable")
    src, dst, weight = src[order], dst[order], weight[order]
    starts = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]])
    targets = dst[starts]
    f = seed.copy()
    for _ in range(iterations):
        spread = np.zeros_like(f)
        spread[targets] = np.add.reduceat(weight[:, None] * f[src], starts, axis=0)
        f = alpha * spread + (1 - alpha) * seed
    scores = np.maximum(f[n:], 0.0)
    total = scores.sum(1)
    best = scores.argmax(1)
    confidence = np.where(total > 0, scores[np.arange(len(scores)), best] / np.maximum(total, 1e-300), 0.0)
    return Proposals(best, confidence, scores)


def _symmetric_edges(nb: np.ndarray, cs: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k-NN graph made symmetric (an edge either way counts, with the larger weight) and
    normalised, ``D^-1/2 W D^-1/2``, as directed edge lists listing each edge both ways."""
    size = len(nb)
    i = np.repeat(np.arange(size), nb.shape[1])
    j = nb.ravel()
    w = np.maximum(cs.ravel(), 0.0).astype(np.float64) ** gamma
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = lo * size + hi
    order = np.lexsort((-w, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    lo, hi, w = lo[first], hi[first], w[first]
    degree = np.bincount(lo, w, size) + np.bincount(hi, w, size)
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    w = w * scale[lo] * scale[hi]
    return np.r_[lo, hi], np.r_[hi, lo], np.r_[w, w]


def nearest(labelled: np.ndarray, codes: np.ndarray, classes: int, inbox: np.ndarray, k: int) -> Proposals:
    """Per-image k-NN vote over the labelled images (``imgembed classify``'s rule: cosine-weighted,
    negative cosines count 0), for comparison."""
    sims = inbox @ labelled.T
    k = min(k, len(labelled))
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    scores = np.zeros((len(inbox), classes))
    for j in range(k):
        np.add.at(scores, (np.arange(len(inbox)), codes[part[:, j]]),
                  np.maximum(sims[np.arange(len(inbox)), part[:, j]], 0.0))
    total = scores.sum(1)
    best = scores.argmax(1)
    confidence = np.where(total > 0, scores[np.arange(len(inbox)), best] / np.maximum(total, 1e-300), 0.0)
    return Proposals(best, confidence, scores)
