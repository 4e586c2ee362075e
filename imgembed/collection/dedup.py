"""Near-duplicate scores from an index's own vectors, normalised against each image's background.

A raw cosine threshold cannot serve every collection: a downscaled, recompressed photo may
score 0.84 with its original while its next neighbour scores 0.30, and two distinct drawings
of one series may score 0.92 in a folder where everything looks alike. Copy-detection work
(e.g. Pizzi et al., "A Self-Supervised Descriptor for Image Copy Detection", 2022) therefore
compares a pair's similarity with the similarities of the images' ordinary neighbours. Here the
background of image i, ``b_i``, is its cosine with its ``k``-th nearest neighbour, and a pair
scores

    relative(i, j) = (cos(i, j) - b) / (1 - b),   b = max(b_i, b_j)

the share of the gap between "an ordinary neighbour" and "identical" that the pair closes: 1
for identical images, 0 for a pair no closer than an ordinary neighbour. In a small or sparse
folder the k-th neighbour is far and every same-category pair would look like a copy, so a
pair must also reach a cosine of ``MIN_COSINE``, which planted copies almost always do.

Downscaling a drawing to a third of its size can drop its cosine with the original below that
floor, where the DCT perceptual hash (stored per image at indexing time,
:func:`imgembed.imaging.decode.perceptual_hash`) barely moves; the hash alone, on the other hand,
confuses distinct drawings on a plain background. So a pair among the embedding's neighbours
also counts when its hashes differ in at most ``HASH_DISTANCE`` of 64 bits and its cosine
reaches ``HASH_MIN_COSINE``: each signal vouches for the other's blind spot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DUPLICATE_K, DUPLICATE_MIN_COSINE, DUPLICATE_THRESHOLDS
from ..imaging.decode import hash_distance

DEFAULT_K = DUPLICATE_K
SCORES = DUPLICATE_THRESHOLDS  # score -> default threshold (docs/quality.md)
CURVE = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
CANDIDATE_FLOOR = 0.5  # pairs below this cosine are not even scored
MIN_COSINE = DUPLICATE_MIN_COSINE  # the relative score's floor on the raw cosine (see the module docstring)
HASH_DISTANCE = 4  # ... or: perceptual hashes this close (bits of 64; chosen in bench/duplicates.py)
HASH_MIN_COSINE = 0.7  # and this cosine


@dataclass
class ScoredPairs:
    pairs: np.ndarray  # (m, 2) row ids, each unordered pair once
    cosine: np.ndarray  # (m,)
    normalised: np.ndarray  # (m,) relative score, see the module docstring
    rows: dict  # row id -> absolute path
    hash_distance: np.ndarray  # (m,) Hamming distance of the perceptual hashes; -1 where one is unknown


def scored_pairs(index, k: int = DEFAULT_K, progress=None) -> ScoredPairs:
    """Every pair among each image's ``k`` nearest neighbours with cosine >= CANDIDATE_FLOOR,
    with its raw and normalised score. ``index`` is an open :class:`~imgembed.index.ImageIndex`;
    memory is O(images x k)."""
    ids_all, neighbours, sims = [], [], []
    total, done = len(index), 0
    for ids, vecs in index.store.iter_vectors(batch=1024):
        for i, hits in zip(ids, index.search(vecs, k + 1)):
            others = [(h.row.id, h.score) for h in hits if h.row.id != int(i)][:k]
            ids_all.append(int(i))
            neighbours.append([o for o, _ in others])
            sims.append([s for _, s in others])
        done += len(ids)
        if progress:
            progress(done, total)
    # the k-th neighbour's cosine (the farthest there is in an index of fewer than k + 1 images)
    background = {i: (s[-1] if s else 0.0) for i, s in zip(ids_all, sims)}
    seen: dict[tuple[int, int], float] = {}
    for i, nb, ss in zip(ids_all, neighbours, sims):
        for j, s in zip(nb, ss):
            if s >= CANDIDATE_FLOOR:
                key = (min(i, j), max(i, j))
                seen[key] = max(seen.get(key, -1.0), s)
    pairs = np.array(list(seen), dtype=np.int64).reshape(-1, 2)
    cosine = np.array(list(seen.values()), dtype=np.float64)
    b = np.maximum([background.get(int(a), 0.0) for a, _ in pairs], [background.get(int(c), 0.0) for _, c in pairs]) \
        if len(pairs) else np.zeros(0)
    normalised = (cosine - b) / np.maximum(1e-6, 1 - b)
    rows = index.store.rows_by_id(sorted({int(x) for x in pairs.ravel()}))
    hashes = [(rows[int(a)].phash, rows[int(c)].phash) for a, c in pairs]
    distance = np.array([-1 if ha is None or hb is None else hash_distance(ha, hb) for ha, hb in hashes], np.int64)
    return ScoredPairs(pairs, cosine, normalised, {i: r.full_path for i, r in rows.items()}, distance)


def select(scored: ScoredPairs, score: str, threshold: float) -> np.ndarray:
    """(m,) bool: the pairs that count as duplicates under ``score`` at ``threshold``."""
    if score == "cosine":
        return scored.cosine >= threshold
    by_hash = (scored.hash_distance >= 0) & (scored.hash_distance <= HASH_DISTANCE) & (scored.cosine >= HASH_MIN_COSINE)
    return (scored.normalised >= threshold) & (scored.cosine >= MIN_COSINE) | by_hash


def connected(pairs: np.ndarray, values: np.ndarray, chosen: np.ndarray) -> tuple[list[list[int]], dict[int, float]]:
    """Groups of the row ids that ``chosen`` pairs join, directly or through a chain (union-find
    with path halving), and each member's best ``value`` with another member. ``pairs`` is
    (m, 2) row ids, ``values`` and ``chosen`` (m,). Groups of two or more, members in id order."""
    parent: dict[int, int] = {}
    best: dict[int, float] = {}

    def find(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (a, b), value, keep in zip(pairs.tolist(), values.tolist(), chosen.tolist()):
        if keep:
            parent[find(a)] = find(b)
            best[a] = max(best.get(a, -1.0), value)
            best[b] = max(best.get(b, -1.0), value)
    members: dict[int, list[int]] = {}
    for i in best:
        members.setdefault(find(i), []).append(i)
    return [sorted(m) for m in members.values() if len(m) > 1], best

