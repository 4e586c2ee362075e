"""Search that uses the collection: database-side augmentation (DBA) of the stored vectors and
alpha query expansion (aQE) at query time. Plain numpy; :class:`~.directory.ImageIndex` keeps
the neighbour lists and augmented vectors in SQLite and calls these functions.

- DBA: each stored vector ``x`` is searched as ``normalise(x + sum_j max(cos(x, x_j), 0)^alpha
  x_j)`` over its ``k`` nearest other stored vectors ``x_j``. An image then also answers for what
  its neighbours look like, so a query near some members of a group finds the rest of it.
- aQE: the query ``q`` becomes ``normalise(q + sum_t max(s_t, 0)^beta a_t)`` over its ``m``
  best (augmented) hits ``a_t`` with scores ``s_t``, and is searched again.

Only ``search`` (and the web app's searches) rank this way; its scores are cosines with the
augmented vectors. The raw vectors stay where they were, in FAISS and SQLite, and everything
that must not move uses them: ``classify``, ``compare``, duplicates, the collection jobs. A
search ranks the raw index's best :data:`SHORTLIST` candidates (the ``k`` asked for, if more) by
their augmented vectors, so its cost does not grow with the index beyond the raw search.

The defaults and the shortlist depth were chosen with bench/dba.py (docs/quality.md): held-out
category retrieval (mAP@R, every image of a set searched, itself left out) gains ...; instance
retrieval of altered copies and the same emoji drawn in another style are measured there too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    mix: float = 0.5

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
                   float(d.get("aqe_beta", 0.0)), float(d.get("mix", 0.5)))

    def describe(self) -> str:
        parts = [f"DBA k={self.k} alpha={self.alpha:g}"] if self.k else []
        parts += [f"aQE m={self.m} beta={self.beta:g}"] if self.m else []
        parts += [f"mix {self.mix:g}"] if parts else []
        return ", ".join(parts) or "none (raw vectors)"


NONE = Expansion()
DEFAULT = Expansion(k=5, alpha=3.0, m=5, beta=0.0)  # new indexes (bench/dba.py)


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


def scores(raw: np.ndarray, query: np.ndarray, augmented: np.ndarray, mix: float) -> np.ndarray:
    """Hit scores from the candidates' ``raw`` cosines with the original query (..., c) and the
    (expanded) ``query``'s (..., d) cosines with their ``augmented`` vectors (..., c, d)."""
    return (1.0 - mix) * raw + mix * np.einsum("...d,...cd->...c", query, augmented)
