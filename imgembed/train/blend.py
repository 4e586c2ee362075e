"""The default trained head: the untrained embedding, blended with a learned projection.

    embedding(f) = normalise([ u ; w * normalise(W (z - m)) ]),  u = normalise(f_last)

``f`` is the pooled backbone output: the last feature map's channels ``f_last`` first, then, for
backbones with ``blend_taps`` (Lite0: four mid-level trunk modules), each tap's pooled channels.
``z`` joins the unit-normalised parts, each weighing the same (``z = u`` without taps). Mid-level
features carry what ImageNet's last stage discards about strokes and shapes: with them the closed
form gained +0.03 k-NN accuracy at 30 images per class over the last map alone, and kept more
on unseen classes (docs/quality.md).

so the cosine of two images is ``(cos_untrained + w^2 cos_projected) / (1 + w^2)``: ``w = 0``
is the untrained embedding exactly, a large ``w`` is the projection alone. ``W`` (D x D) starts
as within-class covariance normalisation (:func:`imgembed.train.closedform.wccn`) fitted on the
labelled features (all cached views, so augmentations count as within-class variation), then is
fine-tuned with the metric loss. The weight ``w`` and the number of fine-tuning epochs are chosen on the
validation images (k-NN accuracy and mAP@R against the training images, as `classify` and
`search` would use them); ``w`` is capped so that retrieval among classes the head never saw,
estimated by fitting on half of the training classes and searching the other half, stays at
least ``OPEN_SET_FLOOR`` of the untrained embedding's. Then the head is fitted again on all
labelled images with the chosen settings.

Why WCCN and not LDA or a head trained from scratch: on folders of 5-30 images per class a
freshly initialised head loses to the closed forms, and LDA, which keeps at most classes - 1
dimensions, loses a third of the untrained embedding's mAP@R on classes it never saw; WCCN
keeps every dimension and gained on unseen classes in four of five sets (docs/quality.md).

Without labels (``imgembed train --unlabelled``) every image is its own class and its cached
augmented views are its members, so WCCN learns which directions crops, flips and colour
changes move an embedding along, and weighs them down; the blend weight is then fixed at
``UNLABELLED_WEIGHT``, since there is nothing to validate on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..collection.metrics import retrieval_metrics
from ..model.heads import BlendHead, head_config, joined  # noqa: F401 - the head this module fits
from . import closedform

WEIGHTS = (0.0, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 5.0)
# Without labels nothing can be validated; an even blend (measured in docs/quality.md).
UNLABELLED_WEIGHT = 1.0
OPEN_SET_FLOOR = 0.98


def _init_closed_form(u: np.ndarray, labels: np.ndarray, shrinkage: float) -> nn.Linear:
    p = closedform.wccn(u, labels, shrinkage=shrinkage)
    linear = nn.Linear(u.shape[1], p.matrix.shape[1])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(p.matrix.T.astype(np.float32)))
        linear.bias.copy_(torch.from_numpy((-p.mean @ p.matrix).astype(np.float32)))
    return linear


def _blend(u: np.ndarray, p: np.ndarray, w: float) -> np.ndarray:
    x = np.concatenate([u, w * p], 1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _score(metrics: dict) -> float:
    return 0.5 * (metrics["knn_accuracy"] + metrics["map_at_r"])


@dataclass
class BlendFit:
    linear: nn.Linear
    weight: float
    epochs: int
    validation: dict  # metrics of the chosen head on the validation images
    untrained: dict  # metrics of the untrained embedding on the same images
    open_cap: float  # the largest weight allowed by the unseen-class check
    history: list = field(default_factory=list)  # (epoch, loss, best weight, its metrics)


def _unit(x: torch.Tensor) -> np.ndarray:
    return F.normalize(x.float(), dim=-1).numpy()


def _split(x: torch.Tensor, parts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features -> (u, z): the untrained embedding and the projection's input."""
    x = x.float()
    return _unit(x[..., :parts[0]]), joined(x, parts).numpy()


def open_set_cap(u: np.ndarray, z: np.ndarray, labels: np.ndarray, shrinkage: float, seed: int) -> float:
    """The largest weight whose mAP@R on held-out classes (head fitted on the others) stays
    >= OPEN_SET_FLOOR x the untrained embedding's. ``u``, ``z``: (n, views, .) as :func:`_split`."""
    classes = np.unique(labels)
    if len(classes) < 4:
        return max(WEIGHTS)
    rng = np.random.default_rng(seed)
    caps = []
    for fold in range(2):  # each half of the classes held out once
        perm = rng.permutation(classes)
        held = perm[:len(classes) // 2] if fold == 0 else perm[len(classes) // 2:]
        fit, ev = ~np.isin(labels, held), np.isin(labels, held)
        linear = _init_closed_form(z[fit].reshape(-1, z.shape[2]), np.repeat(labels[fit], z.shape[1]), shrinkage)
        with torch.no_grad():
            p = _unit(linear(torch.from_numpy(z[ev, 0])))
        base = retrieval_metrics(u[ev, 0], labels[ev])["map_at_r"]
        ok = [w for w in WEIGHTS if retrieval_metrics(_blend(u[ev, 0], p, w), labels[ev])["map_at_r"]
              >= OPEN_SET_FLOOR * base]
        caps.append(max(ok) if ok else 0.0)
    return min(caps)


@dataclass(frozen=True)
class Fitting:
    """How the projection is fine-tuned from its closed form: at most ``epochs`` epochs of AdamW at
    ``lr`` on ``loss_fn(embeddings, labels)`` over ``batches(labels)`` (index arrays); ``parts``
    are the pooled features' channels per part (None: one part); ``shrinkage`` regularises WCCN."""

    epochs: int
    lr: float
    loss_fn: Callable
    batches: Callable
    parts: list[int] | None = None
    shrinkage: float = 0.3
    seed: int = 0


def fit(train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray,
        how: Fitting) -> BlendFit:
    """Choose the head on (train, validation). ``train_x``: (n, views, D) pooled features,
    ``val_x``: (m, D)."""
    parts = how.parts or [train_x.shape[-1]]
    epochs, lr, loss_fn, batches, shrinkage, seed = how.epochs, how.lr, how.loss_fn, how.batches, how.shrinkage, how.seed
    u, z = _split(train_x, parts)
    n, views, d = z.shape
    val_u, val_z = _split(val_x, parts)
    gallery_u, gallery_z = u[:, 0], z[:, 0]
    untrained = retrieval_metrics(val_u, val_y, gallery_u, train_y)
    cap = open_set_cap(u, z, train_y, shrinkage, seed)
    weights = [w for w in WEIGHTS if w <= cap]
    linear = _init_closed_form(z.reshape(-1, d), np.repeat(train_y, views), shrinkage)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=1e-4)
    flat, flat_y = torch.from_numpy(z.reshape(-1, d)), np.repeat(train_y, views)

    def choose(epoch: int, loss: float):
        with torch.no_grad():
            pg, pv = _unit(linear(torch.from_numpy(gallery_z))), _unit(linear(torch.from_numpy(val_z)))
        best = max(((w, retrieval_metrics(_blend(val_u, pv, w), val_y, _blend(gallery_u, pg, w), train_y))
                    for w in weights), key=lambda wm: _score(wm[1]))
        history.append((epoch, loss, *best))
        return best

    history: list = []
    best_w, best_m = choose(0, 0.0)  # epoch 0: the closed form itself
    best = (_score(best_m), 0, best_w, best_m)
    for epoch in range(1, epochs + 1):
        losses = []
        for batch in batches(flat_y):
            emb = F.normalize(linear(flat[torch.from_numpy(batch)]), dim=1)
            loss = loss_fn(emb, torch.from_numpy(flat_y[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        w, m = choose(epoch, float(np.mean(losses)) if losses else 0.0)
        if _score(m) > best[0] + 1e-9:
            best = (_score(m), epoch, w, m)
    _, best_epoch, best_w, best_m = best
    return BlendFit(linear, best_w, best_epoch, best_m, untrained, cap, history)


def refit(x: torch.Tensor, y: np.ndarray, how: Fitting) -> nn.Linear:
    """The projection fitted on all labelled images, for ``how.epochs`` (those :func:`fit` chose)."""
    _, z = _split(x, how.parts or [x.shape[-1]])
    d = z.shape[2]
    flat_y = np.repeat(y, z.shape[1])
    linear = _init_closed_form(z.reshape(-1, d), flat_y, how.shrinkage)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=how.lr, weight_decay=1e-4)
    flat = torch.from_numpy(z.reshape(-1, d))
    for _ in range(how.epochs):
        for batch in how.batches(flat_y):
            loss = how.loss_fn(F.normalize(linear(flat[torch.from_numpy(batch)]), dim=1), torch.from_numpy(flat_y[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return linear
