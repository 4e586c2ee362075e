"""Retrieval quality of a model over labelled folders: leave-one-out, or queries vs a gallery.

Under torch, embeddings of a model whose backbone is shared with others (a head trained on a
frozen backbone, and the untrained backbone itself) come from the feature cache, so comparing
the two runs the backbone once. An ONNX model (an install without torch) embeds each folder
through the decode pool, as ``index`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..collection.metrics import retrieval_metrics
from ..config import CLASSIFY_K
from .data import scan_labelled

if TYPE_CHECKING:
    from ..inference.runtime import OnnxModel
    from ..model.network import EmbeddingModel


@dataclass
class EvalRow:
    name: str
    metrics: dict
    # for reports: the embedded images and what retrieval found for each query
    query_paths: list | None = None
    query_labels: np.ndarray | None = None
    gallery_paths: list | None = None
    gallery_labels: np.ndarray | None = None
    query_vectors: np.ndarray | None = None
    details: list | None = None

    def to_dict(self) -> dict:
        return {"model": self.name, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.metrics.items()}}


def embed_labelled(model: "EmbeddingModel | OnnxModel", folder: str | Path, cache_dir: str | Path, *,
                   workers: int | None = None, batch_size: int = 64, progress: Callable[[int, int], None] | None = None):
    """``(vectors (n, dim), class names (n,), failed [(path, reason)], paths (n,))`` for a labelled folder."""
    data, _ = scan_labelled(folder, min_per_class=1)
    if model.runtime == "torch":
        ok, vectors, failed = _embed_cached(model, data.paths, cache_dir, workers, batch_size, progress)
    else:
        ok, vectors, failed = _embed_direct(model, data.paths, workers, batch_size, progress)
    names = np.array(data.class_names(), dtype=object)[ok]
    paths = [str(data.paths[i]) for i in ok]
    return vectors, names, [(str(data.paths[i]), r) for i, r in failed], paths


def _embed_cached(model: "EmbeddingModel", paths, cache_dir, workers, batch_size, progress):
    import torch
    from torch.nn import functional as F

    from .featcache import FeatureCache

    got = FeatureCache(cache_dir, model).features(paths, 1, batch_size=batch_size, workers=workers,
                                                   progress=progress)
    with torch.no_grad():
        vectors = F.normalize(model.head.eval()(torch.from_numpy(got.features[:, 0])), dim=1).numpy()
    return got.ok, vectors, got.failed


def _embed_direct(model: "OnnxModel", paths, workers, batch_size, progress):
    from ..inference.pool import embed_files

    ok, chunks, failed, done = [], [], [], 0
    for batch in embed_files(model, paths, batch_size=batch_size, workers=workers):
        ok += batch.ok
        chunks.append(batch.vectors)
        failed += batch.failed
        done += len(batch.ok) + len(batch.failed)
        if progress:
            progress(done, len(paths))
    vectors = np.concatenate([c for c in chunks if len(c)]) if ok else np.zeros((0, model.dim), np.float32)
    return np.asarray(ok, np.int64), vectors, failed


def baseline_of(model: "EmbeddingModel | OnnxModel") -> "EmbeddingModel | OnnxModel":
    """The untrained backbone a checkpoint was trained from (its preprocessing and pooling too)."""
    if model.runtime != "torch":
        from ..inference.loader import load

        return load(model.backbone_name, model.source.get("weights", "imagenet"), runtime=model.runtime,
                    like=model.identity)
    from ..model.network import load_model

    return load_model(model.backbone_name, model.source.get("weights", "imagenet"), model.precision,
                      like=model.identity)


def evaluate(model: "EmbeddingModel | OnnxModel", *, cache_dir: str | Path, data_dir: str | Path | None = None,
             query_dir: str | Path | None = None, gallery_dir: str | Path | None = None, baseline: bool = False,
             knn_k: int = CLASSIFY_K, workers: int | None = None, progress=None) -> tuple[list[EvalRow], list[tuple[str, str]]]:
    """Metrics of ``model`` (and of its untrained backbone first, with ``baseline``)."""
    models = ([(f"{model.backbone_name} (untrained)", baseline_of(model))] if baseline else []) + \
        [(model.source.get("model", model.backbone_name), model)]
    rows, failed = [], []
    for name, m in models:
        details: list = []
        if data_dir is not None:
            v, labels, bad, paths = embed_labelled(m, data_dir, cache_dir, workers=workers, progress=progress)
            metrics = retrieval_metrics(v, labels, knn_k=knn_k, details=details)
            row = EvalRow(name, metrics, paths, labels, paths, labels, v, details)
        else:
            qv, ql, bad_q, qp = embed_labelled(m, query_dir, cache_dir, workers=workers, progress=progress)
            gv, gl, bad_g, gp = embed_labelled(m, gallery_dir, cache_dir, workers=workers, progress=progress)
            metrics = retrieval_metrics(qv, ql, gv, gl, knn_k=knn_k, details=details)
            row = EvalRow(name, metrics, qp, ql, gp, gl, qv, details)
            bad = bad_q + bad_g
        rows.append(row)
        failed = failed or bad
    return rows, failed
