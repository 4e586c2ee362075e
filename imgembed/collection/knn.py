"""k-nearest-neighbour label voting, and queries combined from several examples (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import NEGATIVE_WEIGHT


@dataclass(frozen=True)
class Vote:
    """``label`` wins with ``confidence`` = its share of the similarity-weighted vote.

    ``votes`` counts neighbours per label; ``weights`` sums their (non-negative) similarities.
    ``label`` is None when no neighbour carries a label.
    """

    label: str | None
    confidence: float
    votes: dict[str, int]
    weights: dict[str, float]


def vote(labels: Sequence[str | None], scores: Sequence[float]) -> Vote:
    """Similarity-weighted vote over neighbours given best first; unlabelled ones abstain.

    Ties on weight go to the label with more votes, then to the one whose best neighbour
    ranks first.
    """
    votes: dict[str, int] = {}
    weights: dict[str, float] = {}
    first_rank: dict[str, int] = {}
    for rank, (label, score) in enumerate(zip(labels, scores)):
        if label is None:
            continue
        votes[label] = votes.get(label, 0) + 1
        weights[label] = weights.get(label, 0.0) + max(float(score), 0.0)
        first_rank.setdefault(label, rank)
    if not votes:
        return Vote(None, 0.0, {}, {})
    best = min(votes, key=lambda lab: (-weights[lab], -votes[lab], first_rank[lab]))
    total = sum(weights.values())
    confidence = weights[best] / total if total > 0 else votes[best] / sum(votes.values())
    return Vote(best, confidence, votes, weights)




def combine(positives, negatives=(), weight: float = NEGATIVE_WEIGHT):
    """One query vector from examples and counter-examples (Rocchio's rule on unit vectors):
    ``normalise(mean(positives) - weight * mean(negatives))``.

    Ranking by the cosine with it ranks an image by its mean similarity to the examples minus
    ``weight`` times its mean similarity to the counter-examples. The default, 0.25, was chosen
    with bench/combined_queries.py (two examples, the first wrong result as counter-example):
    precision@10 0.515 against 0.512 without it on clip art, where it was chosen, and 0.889
    against 0.867 on three held-out sets; 0.5 already lost (0.468, 0.864), and 1 lost badly
    (0.275, 0.577): a counter-example shares much with the examples (it was the nearest wrong
    result), and subtracting all of it cancels what they have in common.
    ``positives`` is (p, d) with p >= 1, ``negatives`` (n, d); returns a (d,) float32 unit vector.
    """
    pos = np.asarray(positives, np.float32).reshape(-1, np.shape(positives)[-1])
    if not len(pos):
        raise ValueError("a combined query needs at least one example")
    query = pos.mean(0)
    neg = np.asarray(negatives, np.float32)
    if neg.size:
        query = query - weight * neg.reshape(-1, pos.shape[1]).mean(0)
    norm = float(np.linalg.norm(query))
    return (query / norm if norm > 0 else pos.mean(0)).astype(np.float32)
