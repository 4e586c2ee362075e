"""k-nearest-neighbour label voting (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


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
