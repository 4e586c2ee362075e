"""Metric-learning losses and the miners that pick what they train on.

Embeddings are L2-normalised, and distances are Euclidean on the unit sphere (0 for identical
directions, sqrt(2) for orthogonal, 2 for opposite). A miner maps ``(distances, labels)`` to index
tuples; a loss consumes them. Losses average over the tuples whose loss is non-zero (the
"batch all" reduction of Hermans et al., 2017), so easy tuples do not dilute the gradient;
with no valid or no active tuple the loss is 0 and still differentiable.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..config import MINERS


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(n, d) unit vectors -> (n, n) Euclidean distances, differentiable at 0."""
    sq = (2.0 - 2.0 * embeddings @ embeddings.T).clamp_min(0.0)
    eye = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    sq = sq.masked_fill(eye, 0.0)  # rounding leaves ~1e-7 there, which sqrt would make 3e-4
    return torch.sqrt(sq + 1e-12) * (sq > 0)  # exact 0 where equal, and no NaN gradient


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same  # positives (a != p), negatives


def all_triplets(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every (a, p, n) with label[a] == label[p], a != p, label[n] != label[a]."""
    pos, neg = _masks(labels)
    valid = pos[:, :, None] & neg[:, None, :]
    return tuple(valid.nonzero(as_tuple=True))


def semi_hard_triplets(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, ...]:
    """Triplets whose negative lies beyond the positive but within the margin:
    ``d(a, p) < d(a, n) < d(a, p) + margin``."""
    a, p, n = all_triplets(dist, labels)
    dap, dan = dist[a, p], dist[a, n]
    keep = (dan > dap) & (dan < dap + margin)
    return a[keep], p[keep], n[keep]


def batch_hard_triplets(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For each anchor with a positive and a negative: its farthest positive and nearest negative."""
    pos, neg = _masks(labels)
    anchors = (pos.any(1) & neg.any(1)).nonzero(as_tuple=True)[0]
    d = dist.detach()
    hardest_pos = d.masked_fill(~pos, float("-inf")).argmax(1)
    hardest_neg = d.masked_fill(~neg, float("inf")).argmin(1)
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


def mine_triplets(miner: str, dist: torch.Tensor, labels: torch.Tensor, margin: float):
    if miner == "batch-hard":
        return batch_hard_triplets(dist, labels)
    if miner == "semi-hard":
        return semi_hard_triplets(dist, labels, margin)
    if miner == "all":
        return all_triplets(dist, labels)
    raise ValueError(f"unknown miner {miner!r}; choose one of {MINERS}")


def _mean_nonzero(losses: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    active = losses > 0
    if not active.any():
        return anchor.sum() * 0.0  # keeps the graph so that backward() works
    return losses[active].mean()


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2,
                 miner: str = "batch-hard") -> torch.Tensor:
    """Mean over active mined triplets of ``max(0, d(a, p) - d(a, n) + margin)``."""
    dist = pairwise_distances(embeddings)
    a, p, n = mine_triplets(miner, dist, labels, margin)
    return _mean_nonzero(F.relu(dist[a, p] - dist[a, n] + margin), embeddings)


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, pos_margin: float = 0.0,
                     neg_margin: float = 1.0) -> torch.Tensor:
    """Over all pairs: positives pay ``max(0, d - pos_margin)``, negatives ``max(0, neg_margin - d)``;
    each part is averaged over its active pairs and the two are summed."""
    dist = pairwise_distances(embeddings)
    pos, neg = _masks(labels)
    upper = torch.ones_like(pos).triu(1)
    pos_d, neg_d = dist[pos & upper], dist[neg & upper]
    return (_mean_nonzero(F.relu(pos_d - pos_margin), embeddings)
            + _mean_nonzero(F.relu(neg_margin - neg_d), embeddings))
