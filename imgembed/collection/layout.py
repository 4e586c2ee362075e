"""The map: a 2-D layout of a collection's vectors, in which images that look alike lie close.

t-SNE (openTSNE, the ``map`` extra, imported only here and only when a layout is asked for),
chosen over UMAP and PCA on bench/map_layout.py's labelled sets (docs/quality.md, "The map"):
the most trustworthy layout on all four sets, the most of each image's 10 nearest neighbours
kept nearest on the map on all four, labels as well or better kept on three (UMAP on digits),
and on 3,000 drawings about twice as fast as UMAP.

The affinities are built from neighbours the caller found (the index's own search, so that a
large collection is searched the way every query is, with a progress bar): each image's
``3 x perplexity`` nearest others with their cosines. The layout starts from the first two
principal components (the same map on every run, ``seed`` fixed) and is returned scaled into
the unit square, aspect kept, as float32.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ExtraMissingError, InputError

PERPLEXITY = 30.0  # openTSNE's default; bench/map_layout.py measured it
EARLY_ITERATIONS, ITERATIONS = 250, 500  # openTSNE's defaults: early exaggeration, then the rest
REPORT_EVERY = 25  # iterations between progress reports
MIN_TSNE = 6  # fewer images than this are laid out by their principal components alone
Progress = Callable[[int, int], None]  # (done, total) iterations

EXTRA_NEEDED = "the map needs openTSNE, which this install lacks: pip install 'imgembed[map]'"


def require() -> None:
    """Raise :class:`ExtraMissingError` (one line naming the extra) where openTSNE is missing."""
    try:
        import openTSNE  # noqa: F401
    except ImportError:
        raise ExtraMissingError(EXTRA_NEEDED) from None


def perplexity_for(n: int) -> float:
    """The perplexity used for ``n`` images: :data:`PERPLEXITY`, less where there are too few."""
    return max(1.0, min(PERPLEXITY, (n - 1) / 3.0))


def neighbours_needed(n: int) -> int:
    """How many nearest others each image needs for :func:`layout` (0 below :data:`MIN_TSNE`)."""
    return 0 if n < MIN_TSNE else min(n - 1, int(3 * perplexity_for(n)))


def principal_axes(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), axes (2, d)): the first two principal directions of (m, d) ``sample`` (zero
    rows where it has fewer); a collection projected on them, ``(v - mean) @ axes.T``, starts
    the layout."""
    sample = np.asarray(sample, np.float64)
    mean = sample.mean(0) if len(sample) else np.zeros(sample.shape[1])
    axes = np.zeros((2, sample.shape[1]))
    if len(sample) >= 2:
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        m = min(2, vt.shape[0])
        axes[:m] = vt[:m]
    return mean, axes


def unit_square(xy: np.ndarray) -> np.ndarray:
    """``xy`` (n, 2) moved and scaled into [0, 1] x [0, 1], aspect kept (the longer side spans 1)."""
    xy = np.asarray(xy, np.float64)
    if not len(xy):
        return np.zeros((0, 2), np.float32)
    lo, hi = xy.min(0), xy.max(0)
    span = float((hi - lo).max())
    if span <= 0:
        return np.full(xy.shape, 0.5, np.float32)
    return ((xy - lo) / span + (1 - (hi - lo) / span) / 2).astype(np.float32)


def layout(neighbours: np.ndarray, cosines: np.ndarray, start: np.ndarray, *, seed: int = 0,
           n_jobs: int = -1, progress: Progress | None = None) -> np.ndarray:
    """(n, 2) float32 positions in the unit square.

    ``neighbours`` (n, k) are each image's nearest others as positions (0 to n - 1), best first,
    ``cosines`` (n, k) their cosines, k at least :func:`neighbours_needed` (more are cut);
    ``start`` (n, 2) the starting positions (the first two principal components, see
    :func:`principal_axes`). Below :data:`MIN_TSNE` images the start is the layout.
    ``progress(done, total)`` is called every :data:`REPORT_EVERY` iterations."""
    start = np.asarray(start, np.float64)
    n = len(start)
    if n < MIN_TSNE:
        return unit_square(start)
    k = neighbours_needed(n)
    neighbours, cosines = np.asarray(neighbours), np.asarray(cosines)
    if neighbours.shape != cosines.shape or neighbours.shape[0] != n or neighbours.shape[1] < k:
        raise InputError(f"a layout of {n} images needs {k} neighbours of each, not an array of {neighbours.shape}")
    if (neighbours[:, :k] < 0).any() or (neighbours[:, :k] >= n).any():
        raise InputError("every image needs its neighbours for a layout: some were missing or out of range")
    require()
    from openTSNE import TSNEEmbedding, affinity, initialization
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    distances = np.clip(1.0 - cosines[:, :k].astype(np.float64), 0.0, 2.0)
    knn = PrecomputedNeighbors(np.ascontiguousarray(neighbours[:, :k], np.int64), np.ascontiguousarray(distances))
    affinities = affinity.PerplexityBasedNN(knn_index=knn, perplexity=perplexity_for(n), n_jobs=n_jobs,
                                            random_state=seed, verbose=False)
    total, done = EARLY_ITERATIONS + ITERATIONS, [0]

    def report(*_) -> bool:
        done[0] = min(total, done[0] + REPORT_EVERY)
        if progress:
            progress(done[0], total)
        return False  # never stop early

    embedding = TSNEEmbedding(initialization.rescale(start), affinities, n_jobs=n_jobs, random_state=seed,
                              verbose=False, callbacks=report if progress else None,
                              callbacks_every_iters=REPORT_EVERY)
    embedding = embedding.optimize(EARLY_ITERATIONS, exaggeration=12, momentum=0.5)
    embedding = embedding.optimize(ITERATIONS, momentum=0.8)
    if progress:
        progress(total, total)
    return unit_square(np.asarray(embedding))
