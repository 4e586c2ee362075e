"""Search that uses the collection: database-side augmentation (DBA) of the stored vectors and
alpha query expansion (aQE) at query time. The arithmetic is plain numpy; :func:`refresh` and
:func:`search` work on an index's FAISS side and SQLite store (the neighbour lists and augmented
vectors live there), which :class:`~.directory.ImageIndex` passes them.

- DBA: each stored vector ``x`` is searched as ``normalise(x + sum_j max(cos(x, x_j), 0)^alpha
  x_j)`` over its ``k`` nearest other stored vectors ``x_j``. An image then also answers for what
  its neighbours look like, so a query near some members of a group finds the rest of it.
- aQE: the query ``q`` becomes ``normalise(q + sum_t max(s_t, 0)^beta a_t)`` over its ``m``
  best (augmented) hits ``a_t`` with scores ``s_t``, and is searched again.

Only ``search`` (and the web app's searches) rank this way, and never at the top: the query's
near-duplicates (itself, when it is indexed) and in any case its nearest other image by raw
cosine keep the first places, so finding an altered copy, or the same subject drawn another
way, is exactly what it was (:func:`order`); the expanded ranking orders the places after
them. Scores stay the raw cosines, what ``compare`` says (1 for identical images), so a lower
score may follow a higher. The raw vectors stay where they were, in FAISS and SQLite, and
everything that must not move uses them: ``classify``, ``compare``, duplicates, combined
queries, the collection jobs. A search ranks the raw index's best :data:`SHORTLIST`
candidates (the ``k`` asked for, if more), and with query expansion those of the expanded
query too, so its cost does not grow with the index beyond two raw searches.

The defaults and the shortlist depth were chosen with bench/dba.py (docs/quality.md): held-out
category retrieval (mAP@R, every image of a set searched, itself left out) rises from 0.260 to
0.311 over nine sets, instance and other-style rank-1 stay the raw search's. Keeping the lists
costs 1-2 ms an image in a full run and about as much as embedding per image added later;
a query 4-8x the raw one (bench/expansion_cost.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DUPLICATE_K, DUPLICATE_MIN_COSINE, DUPLICATE_THRESHOLDS

SHORTLIST = 200  # raw candidates a search re-ranks by their augmented vectors


@dataclass(frozen=True)
class Expansion:
    """How an index searches: ``k`` neighbours in each stored vector's augmentation (0: none),
    their weights' exponent ``alpha``; ``m`` hits in each query's expansion (0: none), theirs
    ``beta``; a hit's score is ``(1 - mix)`` times its raw cosine with the query plus ``mix``
    times the (expanded) query's cosine with its augmented vector. Recorded in the manifest
    (``"expansion"``); an index without one searches raw."""

    k: int = 0
    alpha: float = 3.0
    m: int = 0
    beta: float = 0.0
    mix: float = 1.0

    @property
    def active(self) -> bool:
        return self.k > 0 or self.m > 0

    def to_dict(self) -> dict:
        return {"dba_k": self.k, "dba_alpha": self.alpha, "aqe_m": self.m, "aqe_beta": self.beta, "mix": self.mix}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Expansion":
        if not d:
            return NONE
        return cls(int(d.get("dba_k", 0)), float(d.get("dba_alpha", 3.0)), int(d.get("aqe_m", 0)),
                   float(d.get("aqe_beta", 0.0)), float(d.get("mix", 1.0)))

    def describe(self) -> str:
        parts = [f"DBA k={self.k} alpha={self.alpha:g}"] if self.k else []
        parts += [f"aQE m={self.m} beta={self.beta:g}"] if self.m else []
        parts += [f"mix {self.mix:g}"] if parts else []
        return ", ".join(parts) or "none (raw vectors)"


NONE = Expansion()
DEFAULT = Expansion(k=20, alpha=3.0, m=10, beta=0.0, mix=1.0)  # new indexes (bench/dba.py, docs/quality.md)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def weights(sims: np.ndarray, power: float) -> np.ndarray:
    """``max(sims, 0) ** power`` (power 0: one for every non-negative similarity)."""
    return np.maximum(np.asarray(sims, np.float32), 0.0) ** power


def augment(vectors: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    """DBA: ``vectors`` (n, d) with their neighbours' vectors ``neighbours`` (n, k, d) and cosines
    ``sims`` (n, k; padding rows weigh nothing where sims is -inf) -> (n, d) unit vectors."""
    w = weights(sims, alpha)
    return normalise(vectors + np.einsum("nk,nkd->nd", w, neighbours))


def expand(queries: np.ndarray, hits: np.ndarray, scores: np.ndarray, beta: float) -> np.ndarray:
    """aQE: ``queries`` (q, d) with their best hits' (augmented) vectors ``hits`` (q, m, d) and
    scores (q, m) -> (q, d) unit vectors."""
    w = weights(scores, beta)
    return normalise(queries + np.einsum("qm,qmd->qd", w, hits))


IDENTICAL = 1 - 1e-4  # a raw cosine from which an image counts as the query itself


def order(raw: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates best first, from their raw cosines with the query and their expanded ranking
    ``key`` (both (c,)): the query's near-duplicates, as ``imgembed duplicates`` defines them
    (cosine >= ``config.DUPLICATE_MIN_COSINE`` and relative score >= its default threshold,
    the background being the query's 10th nearest other image; the query itself, when it is
    indexed), and in any case its nearest other image keep the first places, in their raw
    order; the rest follow by ``key``. Returns the positions and a key to merge several
    indexes' hits by, which puts the kept places (``2 + cosine``) above every expanded key (<= 1)."""
    by_raw = np.argsort(-raw, kind="stable")
    identical = int((raw >= IDENTICAL).sum())
    background = raw[by_raw[min(identical + DUPLICATE_K - 1, len(raw) - 1)]]
    relative = (raw - background) / max(1.0 - background, 1e-6)
    near = int(((raw >= DUPLICATE_MIN_COSINE) & (relative >= DUPLICATE_THRESHOLDS["relative"])).sum())
    kept = by_raw[:max(near, identical + 1)]
    merged = np.where(np.isin(np.arange(len(raw)), kept), 2.0 + raw, key)
    positions = np.argsort(-merged, kind="stable")
    return positions, merged[positions]


def scores(raw: np.ndarray, query: np.ndarray, augmented: np.ndarray, mix: float) -> np.ndarray:
    """Hit scores from the candidates' ``raw`` cosines with the original query (..., c) and the
    (expanded) ``query``'s (..., d) cosines with their ``augmented`` vectors (..., c, d)."""
    return (1.0 - mix) * raw + mix * np.einsum("...d,...cd->...c", query, augmented)


# -- on an index: its FAISS side (``vectors``, a backends.Backend) and its SQLite ``store`` -----

def search(vectors, store, query: np.ndarray, k: int, e: Expansion, *,
           augmented: bool = True) -> list[tuple[int, float, float]]:
    """One query's ``k`` best ``(row id, cosine, ranking key)``, ranked with ``e``: the raw
    search's best ``max(SHORTLIST, k)`` candidates scored against their augmented vectors (their
    stored ones where they have none, or without ``augmented``); with ``e.m``, the query is
    expanded and the raw search's best for the expanded query join them, all scored with it;
    then :func:`order`."""
    depth = max(SHORTLIST, k)
    ids, raw, aug = _shortlist(vectors, store, query, depth, augmented and e.k > 0)
    if not ids:
        return []
    got = scores(raw @ query, query, aug, e.mix)
    if e.m:
        top = np.argsort(-got, kind="stable")[:e.m]
        expanded = expand(query[None], aug[top][None], got[top][None], e.beta)[0]
        more, more_raw, more_aug = _shortlist(vectors, store, expanded, depth, augmented and e.k > 0)
        first = set(ids)
        new = [n for n, i in enumerate(more) if i not in first]  # both shortlists: the first holds the nearest
        ids = ids + [more[n] for n in new]
        raw, aug = np.concatenate([raw, more_raw[new]]), np.concatenate([aug, more_aug[new]])
        got = scores(raw @ query, expanded, aug, e.mix)
    cosines = raw @ query
    positions, keys = order(cosines, got)
    return [(ids[i], float(cosines[i]), float(key)) for i, key in zip(positions[:k], keys)]


def _shortlist(vectors, store, query: np.ndarray, depth: int, augmented: bool):
    """The raw search's best ``depth`` live ids, their stored vectors and their augmented ones."""
    _, ids = vectors.search(query[None], depth + vectors.stale, store)
    found = [int(i) for i in ids[0] if i >= 0]
    raw = store.vectors_by_id(found)
    found = [i for i in found if i in raw][:depth]
    aug = store.augmented_by_id(found) if augmented else {}
    if not found:
        return [], np.empty((0, len(query)), np.float32), np.empty((0, len(query)), np.float32)
    return found, np.stack([raw[i] for i in found]), np.stack([aug.get(i, raw[i]) for i in found])


def refresh(vectors, store, e: Expansion, dim: int, *, exact: bool, progress=None, chunk: int = 1024) -> int:
    """Bring the neighbour lists and augmented vectors of an index up to date with its images:
    images without them get them, and so do images a new image now counts among the nearest
    ``e.k`` of (:func:`_lists_entered`), or whose list names an image that is gone. The FAISS
    side must hold every image (a published index). Cost: one search of depth ``k + 1`` per
    list made, plus finding the lists the new images enter. Returns how many lists were made."""
    fresh, stale = store.expansion_todo()
    todo = sorted(set(fresh) | set(stale) | _lists_entered(vectors, store, fresh, e.k, exact))
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        stored = store.vectors_by_id(part)
        part = [i for i in part if i in stored]
        x = np.stack([stored[i] for i in part])
        sims, ids = vectors.search(x, e.k + 1, store)
        lists = [[(int(j), float(c)) for c, j in zip(srow, irow) if j >= 0 and int(j) != i][:e.k]
                 for i, srow, irow in zip(part, sims, ids)]
        theirs = store.vectors_by_id({j for nb in lists for j, _ in nb})
        lists = [[(j, c) for j, c in nb if j in theirs] for nb in lists]
        nbv = np.zeros((len(part), e.k, dim), np.float32)
        nbs = np.full((len(part), e.k), -np.inf, np.float32)  # lists shorter than k: padding weighs nothing
        for row, nb in enumerate(lists):
            for col, (j, c) in enumerate(nb):
                nbv[row, col], nbs[row, col] = theirs[j], c
        aug = augment(x, nbv, nbs, e.alpha)
        store.set_expansion((i, [j for j, _ in nb], [c for _, c in nb], v) for i, nb, v in zip(part, lists, aug))
        if progress:
            progress(min(start + chunk, len(todo)), len(todo))
    return len(todo)


def _lists_entered(vectors, store, fresh: list[int], k: int, exact: bool) -> set[int]:
    """Images, other than ``fresh``, whose nearest ``k`` a fresh image now belongs among.

    An ``exact`` index compares every stored vector with the fresh ones (what searching them
    costs it anyway), so its lists come out as a fresh index's would; an approximate one looks
    among each fresh image's nearest ``4 k``, which may miss the list of an image that many
    others crowd closer to it."""
    if not fresh or len(fresh) == len(vectors):
        return set()
    stored = store.vectors_by_id(fresh)
    new = np.stack([stored[i] for i in fresh])
    fresh_set, near = set(fresh), {}
    if exact:
        for ids, x in store.iter_vectors():
            best = (x @ new.T).max(1)
            near.update((int(i), float(c)) for i, c in zip(ids, best) if int(i) not in fresh_set)
    else:
        sims, ids = vectors.search(new, 4 * k + 1, store)
        for c, i in zip(sims.ravel(), ids.ravel()):
            if i >= 0 and int(i) not in fresh_set:
                near[int(i)] = max(near.get(int(i), -np.inf), float(c))
    floor = store.neighbour_floor(near)
    return {i for i, c in near.items() if i in floor and (floor[i][0] < k or c > floor[i][1])}
