"""Auditing a labelled collection from its own vectors (numpy only): which labels disagree with
their image's neighbourhood, which images are unlike their class and the collection, which
near-duplicates are filed under two labels, and which cross a train/test split or two roots.

Mislabels. Two views of the rest of the collection judge each image's label, both leaving the
image itself out:

- a linear fit: ridge regression of one-hot labels on the vectors (unpenalised intercept,
  penalty ``lambda = RIDGE_ALPHA * n / d``, so that it keeps its strength as the collection
  grows), whose exact leave-one-out output needs no refit, ``f_loo = (f - h y) / (1 - h)`` with
  ``h`` the image's leverage; it weighs every labelled image;
- the neighbourhood: the ``k`` nearest other images' cosine-weighted vote (negative cosines
  count 0, as ``imgembed classify`` votes), each label's votes divided by its share of the
  labelled images, so that a big class does not win every mixed neighbourhood by size alone;
  ``v_c`` are the resulting shares, summing to 1. It sees local structure a linear fit misses.

With evidence ``e_c = f_c + KNN_WEIGHT * v_c``, an image labelled ``y`` scores

    mislabel = max_{c != y} e_c - e_y

and its ``suggested`` label is that best other ``c``: above 1 when both views say plainly that
it belongs elsewhere, below 0 when they agree with its label. ``RIDGE_ALPHA``, ``KNN_WEIGHT``
and ``MISLABEL_THRESHOLD`` were chosen on the tuning sets of bench/audit.py (docs/quality.md,
"Auditing a labelled folder"): either view alone ranked planted noise worse.

Outliers. An image's distance from the collection is ``1 - mean cosine of its k nearest
neighbours``; its distance from its class is ``1 - cosine with its class's mean vector`` (the
image left out). Each is turned into a robust z-score (median and 1.4826 x MAD), the first
against the whole collection, the second within the class, and an outlier must be far on both:

    outlier = min(z_collection, z_class)                   (z_collection alone when unlabelled)

so that a mislabelled image, far from its (wrong) class but close to the collection, is not
also reported as an outlier. ``OUTLIER_THRESHOLD`` is 3.5, the usual cut of a modified z-score
(Iglewicz and Hoaglin, 1993).

Duplicates and leaks take the near-duplicate pairs of :mod:`imgembed.collection.dedup` (its
relative score and default threshold): a pair whose two labels differ is a ``duplicate``; a
pair under two roots, or under two different split folders (a path component named train,
test, val, ...), is a ``leak``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import AUDIT_K, AUDIT_KINDS, MISLABEL_THRESHOLD, OUTLIER_THRESHOLD  # noqa: F401 - read from here too

KINDS = AUDIT_KINDS

RIDGE_ALPHA = 1.0  # the mislabel fit's penalty, in units of n / d (bench/audit.py, tuning sets)
KNN_WEIGHT = 0.5  # the neighbourhood vote's weight in the mislabel evidence (bench/audit.py, tuning sets)
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "dev", "eval"})


@dataclass(frozen=True)
class Graph:
    """Each image's nearest other images, best first: ``neighbours`` (n, k) positions (-1 where
    fewer than k exist) and ``cosines`` (n, k)."""

    neighbours: np.ndarray
    cosines: np.ndarray

    @classmethod
    def from_lists(cls, neighbours: Sequence[Sequence[int]], cosines: Sequence[Sequence[float]], k: int) -> "Graph":
        n = len(neighbours)
        nb = np.full((n, k), -1, np.int64)
        cs = np.zeros((n, k), np.float64)
        for i, (js, ss) in enumerate(zip(neighbours, cosines)):
            m = min(k, len(js))
            nb[i, :m] = js[:m]
            cs[i, :m] = ss[:m]
        return cls(nb, cs)


def label_codes(labels: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """(n,) int codes (-1 for no label) and the sorted distinct labels they index."""
    classes = sorted({lab for lab in labels if lab is not None})
    code = {lab: c for c, lab in enumerate(classes)}
    return np.array([code.get(lab, -1) if lab is not None else -1 for lab in labels], np.int64), classes


def vote_shares(graph: Graph, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, C) each image's class-size corrected, cosine-weighted vote shares over its
    neighbours (the image itself is never among them; rows without labelled neighbours are 0)."""
    n, k = graph.neighbours.shape
    valid = graph.neighbours >= 0
    nb_codes = np.where(valid, codes[np.where(valid, graph.neighbours, 0)], -1)
    keep = nb_codes.ravel() >= 0
    votes = np.zeros((n, n_classes))
    np.add.at(votes, (np.repeat(np.arange(n), k)[keep], nb_codes.ravel()[keep]),
              np.maximum(graph.cosines, 0.0).ravel()[keep])
    sizes = np.tile(np.bincount(codes[codes >= 0], minlength=n_classes).astype(np.float64), (n, 1))
    own = np.flatnonzero(codes >= 0)
    sizes[own, codes[own]] -= 1  # the image itself is not one of its class's voters
    votes = np.where(sizes > 0, votes / np.maximum(sizes, 1.0), 0.0)
    total = votes.sum(1, keepdims=True)
    return votes / np.where(total > 0, total, 1.0)


def ridge_loo(vectors: np.ndarray, codes: np.ndarray, n_classes: int, alpha: float = RIDGE_ALPHA) -> np.ndarray:
    """(n, C) leave-one-out outputs of ridge regression of one-hot ``codes`` (all >= 0) on
    ``vectors`` (n, d), with an unpenalised intercept and penalty ``alpha * n / d``. One
    eigendecomposition of the d x d scatter matrix: O(n d^2 + d^3) time, O(n d) memory."""
    x = np.asarray(vectors, np.float64)
    n, d = x.shape
    x = x - x.mean(0)  # centring is what leaves the intercept unpenalised
    s2, basis = np.linalg.eigh(x.T @ x)
    z = x @ basis
    shrink = 1.0 / (np.clip(s2, 0.0, None) + alpha * n / d)
    y = np.eye(n_classes)[codes]
    mean = y.mean(0)
    fitted = mean + (z * shrink) @ (z.T @ (y - mean))
    leverage = 1.0 / n + (z * z * shrink).sum(1)
    return (fitted - leverage[:, None] * y) / np.maximum(1.0 - leverage, 1e-9)[:, None]


def mislabel_scores(vectors: np.ndarray, codes: np.ndarray, n_classes: int, graph: Graph | None = None, *,
                    alpha: float = RIDGE_ALPHA, knn_weight: float = KNN_WEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """``(score, suggested)``, each (n,): the best other label's evidence minus the own label's
    (see the module docstring), and that label's code. ``vectors`` is (n, d), ``graph`` each
    image's nearest others (None, or ``knn_weight`` 0: the linear fit alone). Images without a
    label (code -1) are left out of the fit and the vote, score NaN and suggest -1, as does
    every image when there are fewer than two labels."""
    n = len(codes)
    score = np.full(n, np.nan)
    suggested = np.full(n, -1, np.int64)
    labelled = np.flatnonzero(codes >= 0)
    if n_classes < 2 or len(labelled) < 2:
        return score, suggested
    evidence = ridge_loo(np.asarray(vectors)[labelled], codes[labelled], n_classes, alpha)
    if graph is not None and knn_weight:
        evidence = evidence + knn_weight * vote_shares(graph, codes, n_classes)[labelled]
    rows = np.arange(len(labelled))
    own = evidence[rows, codes[labelled]]
    evidence[rows, codes[labelled]] = -np.inf
    best = evidence.argmax(1)
    score[labelled] = evidence[rows, best] - own
    suggested[labelled] = best
    return score, suggested


def robust_z(x: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 * MAD)``; 0 where the spread is nil."""
    x = np.asarray(x, np.float64)
    if not len(x):
        return x
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    return (x - med) / mad if mad > 1e-12 else np.zeros_like(x)


def outlier_scores(graph: Graph, vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(n,) outlier scores (see the module docstring). ``vectors`` are the (n, d) unit vectors."""
    valid = graph.neighbours >= 0
    counted = np.maximum(valid.sum(1), 1)
    distance = 1.0 - np.where(valid, graph.cosines, 0.0).sum(1) / counted
    z_all = robust_z(distance)
    score = z_all.copy()
    vectors = np.asarray(vectors, np.float64)
    for c in np.unique(codes[codes >= 0]):
        members = np.flatnonzero(codes == c)
        if len(members) < 3:  # no class to be unlike
            continue
        x = vectors[members]
        rest = x.sum(0)[None, :] - x
        cos = (x * rest).sum(1) / np.maximum(np.linalg.norm(rest, axis=1) * np.linalg.norm(x, axis=1), 1e-12)
        score[members] = np.minimum(z_all[members], robust_z(1.0 - cos))
    return score


def split_of(relative: str) -> str | None:
    """The split folder (train, test, val, ...) a relative path lies under, lower-cased, or None."""
    parts = relative.replace("\\", "/").split("/")[:-1]
    return next((p.lower() for p in parts if p.lower() in SPLIT_NAMES), None)


def class_of(label: str | None) -> str | None:
    """A label without its split folders: ``train/cat`` and ``test/cat`` are both ``cat``, so a
    train/test layout is one set of classes. None when nothing else is left."""
    if label is None:
        return None
    parts = [p for p in label.replace("\\", "/").split("/") if p.lower() not in SPLIT_NAMES]
    return "/".join(parts) or None


def _normal_split(name: str | None) -> str | None:
    return {"training": "train", "testing": "test", "valid": "val", "validation": "val"}.get(name, name)


def pair_kinds(pairs: np.ndarray, labels: Sequence[str | None], roots: Sequence[str],
               relatives: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """For (m, 2) position pairs: ``(duplicate, leak)``, two (m,) bool arrays. A duplicate's two
    labels (as :func:`class_of` gives them) are both set and differ; a leak lies under two roots or under two different split
    folders of one root."""
    m = len(pairs)
    duplicate = np.zeros(m, bool)
    leak = np.zeros(m, bool)
    for p, (a, b) in enumerate(np.asarray(pairs, np.int64).reshape(-1, 2).tolist()):
        la, lb = class_of(labels[a]), class_of(labels[b])
        duplicate[p] = la is not None and lb is not None and la != lb
        if roots[a] != roots[b]:
            leak[p] = True
        else:
            sa, sb = _normal_split(split_of(relatives[a])), _normal_split(split_of(relatives[b]))
            leak[p] = sa is not None and sb is not None and sa != sb
    return duplicate, leak
