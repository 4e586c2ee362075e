"""Closed-form projections of backbone features, in plain numpy (no torch).

- :func:`pca_whitening`: centre, rotate onto the principal axes and scale each to unit
  variance (with shrinkage, so that noise directions are not blown up). Fitted without labels.
- :func:`wccn`: within-class covariance normalisation (Hatch et al. 2006): whiten by the
  within-class scatter, so that the directions in which images of one class vary (pose, style,
  background) count less in a cosine, in every dimension. Unlike LDA it keeps all dimensions,
  and what it learns about nuisance variation carries over to classes it never saw.
- :func:`lda`: regularised linear discriminant analysis: the directions that maximise
  between-class over within-class scatter, the within-class scatter shrunk towards a multiple
  of the identity (Ledoit & Wolf style) so that it is invertible when there are fewer images
  than dimensions.

Both return a :class:`Projection` ``(mean, matrix)``: ``y = (x - mean) @ matrix``. Inputs are
``(n, d)`` float arrays, usually L2-normalised features; outputs are L2-normalised ``(n, k)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (d,)
    matrix: np.ndarray  # (d, k)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return l2n((np.asarray(x, np.float64) - self.mean) @ self.matrix).astype(np.float32)


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pca_whitening(x: np.ndarray, dim: int | None = None, shrinkage: float = 0.1) -> Projection:
    """PCA-whitening fitted on ``x`` (n, d), keeping ``dim`` axes (default: all with variance).

    Each axis is divided by ``sqrt(var + shrinkage * mean variance)`` rather than ``sqrt(var)``:
    with few images the smallest variances are noise, and full whitening would amplify it."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s ** 2 / max(1, len(x) - 1)
    keep = int((var > 1e-10 * var.max(initial=0)).sum())
    keep = min(keep, dim) if dim else keep
    var, vt = var[:keep], vt[:keep]
    return Projection(mean, vt.T / np.sqrt(var + shrinkage * var.mean()))


def _within_scatter(x: np.ndarray, labels: np.ndarray, shrinkage: float):
    """Mean, class means, and the shrunk within-class scatter ``(1 - a) Sw + a (trace(Sw) / d) I``."""
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    sw = centred.T @ centred / len(x)
    d = x.shape[1]
    return classes, means, (1 - shrinkage) * sw + shrinkage * np.trace(sw) / d * np.eye(d)


def wccn(x: np.ndarray, labels: np.ndarray, shrinkage: float = 0.3) -> Projection:
    """WCCN fitted on ``x`` (n, d) with ``labels``: a (d, d) matrix ``M`` with ``M M^T = Sw^-1``,
    so that ``(Mx) . (My) = x^T Sw^-1 y``. ``M = L^-T`` from the Cholesky factor ``Sw = L L^T``
    gives the same inner products as ``Sw^(-1/2)`` at a tenth of an eigendecomposition's time."""
    x = np.asarray(x, np.float64)
    _, _, sw = _within_scatter(x, np.asarray(labels), shrinkage)
    chol = np.linalg.cholesky(sw)
    return Projection(x.mean(0), np.linalg.inv(chol).T)


def lda(x: np.ndarray, labels: np.ndarray, shrinkage: float = 0.3, dim: int | None = None) -> Projection:
    """Regularised LDA fitted on ``x`` (n, d) with ``labels`` (n,): at most classes - 1 axes.

    The within-class scatter ``Sw`` is replaced by ``(1 - a) Sw + a (trace(Sw) / d) I`` with
    ``a = shrinkage``; the axes solve ``Sb v = l Sw v`` (largest ``l`` first) and are scaled by
    ``sqrt(l)`` so that more discriminative axes weigh more in a cosine."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    mean = x.mean(0)
    d = x.shape[1]
    classes, means, sw = _within_scatter(x, labels, shrinkage)
    counts = np.array([(labels == c).sum() for c in classes], np.float64)
    between = (means - mean) * np.sqrt(counts / len(x))[:, None]
    # Whiten by Sw (Cholesky), then the between-class scatter's eigenvectors: Sb has rank
    # <= classes - 1, so an SVD of the (classes x d) factor is enough.
    chol = np.linalg.cholesky(sw)
    factor = np.linalg.solve(chol, between.T)  # (d, classes)
    u, s, _ = np.linalg.svd(factor, full_matrices=False)
    k = min(len(classes) - 1, dim or d, int((s > 1e-8 * s.max(initial=0)).sum()))
    matrix = np.linalg.solve(chol.T, u[:, :k]) * s[:k]
    return Projection(mean, matrix)
