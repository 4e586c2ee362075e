"""Each miner and loss against a plain Python loop over hand-listed tuples."""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from imgembed.train.losses import (
    all_triplets,
    batch_hard_triplets,
    contrastive_loss,
    pairwise_distances,
    semi_hard_triplets,
    triplet_loss,
)


def embeddings(seed=0, n=8, d=4):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])  # class 3 has one image: anchor only as a negative


def dist_py(e, i, j):
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(e[i], e[j])))


def triplets_py(labels):
    n = len(labels)
    return [(a, p, q) for a, p, q in itertools.product(range(n), repeat=3)
            if a != p and labels[a] == labels[p] and labels[q] != labels[a]]


def test_distances():
    e = embeddings()
    d = pairwise_distances(e)
    for i, j in itertools.product(range(8), repeat=2):
        assert d[i, j].item() == pytest.approx(dist_py(e, i, j), abs=1e-5)


def test_all_triplets_lists_every_valid_triplet():
    e = embeddings()
    got = set(zip(*(t.tolist() for t in all_triplets(pairwise_distances(e), LABELS))))
    assert got == set(triplets_py(LABELS.tolist()))
    assert len(got) == 3 * 2 * 5 + 2 * 1 * 6 * 2  # class 0: 3 anchors x 2 pos x 5 neg; classes 1, 2 alike


def test_semi_hard_triplets():
    e, margin = embeddings(1), 0.3
    got = set(zip(*(t.tolist() for t in semi_hard_triplets(pairwise_distances(e), LABELS, margin))))
    want = {(a, p, n) for a, p, n in triplets_py(LABELS.tolist())
            if dist_py(e, a, p) < dist_py(e, a, n) < dist_py(e, a, p) + margin}
    assert got == want and got


def test_batch_hard_triplets():
    e = embeddings(2)
    got = list(zip(*(t.tolist() for t in batch_hard_triplets(pairwise_distances(e), LABELS))))
    want = []
    for a in range(8):
        pos = [p for p in range(8) if p != a and LABELS[p] == LABELS[a]]
        neg = [n for n in range(8) if LABELS[n] != LABELS[a]]
        if pos and neg:
            want.append((a, max(pos, key=lambda p: dist_py(e, a, p)), min(neg, key=lambda n: dist_py(e, a, n))))
    assert got == want and len(want) == 7  # the lone image of class 3 is no anchor


@pytest.mark.parametrize("miner", ["all", "semi-hard", "batch-hard"])
def test_triplet_loss_matches_loop(miner):
    e, margin = embeddings(3), 0.5
    if miner == "all":
        chosen = triplets_py(LABELS.tolist())
    elif miner == "semi-hard":
        chosen = [(a, p, n) for a, p, n in triplets_py(LABELS.tolist())
                  if dist_py(e, a, p) < dist_py(e, a, n) < dist_py(e, a, p) + margin]
    else:
        chosen = list(zip(*(t.tolist() for t in batch_hard_triplets(pairwise_distances(e), LABELS))))
    losses = [max(0.0, dist_py(e, a, p) - dist_py(e, a, n) + margin) for a, p, n in chosen]
    active = [x for x in losses if x > 0]
    expected = sum(active) / len(active) if active else 0.0
    assert triplet_loss(e, LABELS, margin=margin, miner=miner).item() == pytest.approx(expected, abs=1e-5)


def test_contrastive_loss_matches_loop():
    e, pm, nm = embeddings(4), 0.2, 1.2
    pos, neg = [], []
    for i, j in itertools.combinations(range(8), 2):
        d = dist_py(e, i, j)
        (pos if LABELS[i] == LABELS[j] else neg).append(max(0.0, d - pm) if LABELS[i] == LABELS[j] else max(0.0, nm - d))
    mean = lambda xs: sum(x for x in xs if x > 0) / max(1, sum(1 for x in xs if x > 0))  # noqa: E731
    got = contrastive_loss(e, LABELS, pos_margin=pm, neg_margin=nm).item()
    assert got == pytest.approx(mean(pos) + mean(neg), abs=1e-5)


def test_no_valid_triplet_gives_zero_and_a_gradient():
    e = embeddings(5, n=4).requires_grad_()
    for labels in (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 0, 0])):  # no positives / no negatives
        for miner in ("all", "semi-hard", "batch-hard"):
            loss = triplet_loss(e, labels, miner=miner)
            assert loss.item() == 0.0
            loss.backward()
    separated = F.normalize(torch.tensor([[1.0, 0], [1.0, 0.01], [-1.0, 0], [-1.0, -0.01]]), dim=1)
    assert triplet_loss(separated, torch.tensor([0, 0, 1, 1]), margin=0.2).item() == 0.0  # all satisfied


def test_triplet_training_separates_classes():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20, 8) + 0.5, torch.randn(20, 8) - 0.5])
    labels = torch.tensor([0] * 20 + [1] * 20)
    head = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = triplet_loss(F.normalize(head(x), dim=1), labels, miner="batch-hard")
        first = first if first is not None else loss.item()
        opt.zero_grad(), loss.backward(), opt.step()
    assert loss.item() < first * 0.5
