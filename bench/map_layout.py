"""The map's 2-D layout: UMAP against t-SNE (openTSNE), with PCA as the floor, on labelled sets.

    .venv/bin/python bench/map_layout.py [--sets clipart fashion digits photos] [--repeats 1]

Each set of bench/quality_data.py is indexed with the default model by the real
`api.index_folder` (bench/data/map/<set>/index, kept between runs), and its stored vectors are
laid out in 2-D by each method. Measured, for each layout:

- trustworthiness (sklearn.manifold.trustworthiness, k = 10, cosine in the embedding space): 1
  when no point's 2-D neighbours are strangers in the embedding space;
- kNN kept: the share of each image's 10 nearest neighbours (cosine, embedding space) that are
  among its 10 nearest on the map;
- label agreement: how often the majority label of an image's 10 nearest others on the map is
  its own label (leave-one-out), beside the same vote in the embedding space (``space``), the
  ceiling: what a user reads off the map as "points of a colour sit together";
- seconds for the layout alone (library imported and JIT-compiled beforehand, on a warm-up set).

``tsne`` is openTSNE's own (its neighbours, PCA start); ``imgembed`` is what the product runs,
``api.index_map`` on the index with its cache removed: the index's own neighbour search, then
openTSNE from those affinities (its time includes the search).

Results: bench/data/map/results.json and the table printed (docs/quality.md, "The map").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import quality_data
from quality_data import HERE

sys.path.insert(0, str(HERE.parent))

OUT = HERE / "data" / "map"
SETS = ("clipart", "fashion", "digits", "photos")
K = 10


def index(name: str, model) -> Path | None:
    from imgembed.api import LocalPool, index_folder

    folder = quality_data.BUILDERS[name](quality_data.ROOT / name)
    if folder is None:
        return None
    directory = OUT / name / "index"
    index_folder(folder, directory, model, executor=LocalPool(workers=2))
    return directory


def stored(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, d), label codes (n,)) in id order."""
    from imgembed.collection.audit import label_codes
    from imgembed.index import ImageIndex

    with ImageIndex.open(directory) as idx:
        ids, vecs = zip(*idx.store.iter_vectors())
        ids, vecs = np.concatenate(ids), np.concatenate(vecs)
        rows = idx.store.rows_by_id(ids.tolist())
    codes, _ = label_codes([rows[int(i)].label for i in ids])
    return vecs, codes


def neighbours(points: np.ndarray, k: int, cosine: bool) -> np.ndarray:
    """(n, k) positions of each point's k nearest others."""
    if cosine:
        d = -(points @ points.T)
    else:
        sq = (points ** 2).sum(1)
        d = sq[:, None] + sq[None, :] - 2 * points @ points.T
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def vote_accuracy(nb: np.ndarray, codes: np.ndarray) -> float:
    n_classes = codes.max() + 1
    votes = np.zeros((len(codes), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(codes)), nb.shape[1]), codes[nb].ravel()), 1)
    return float((votes.argmax(1) == codes).mean())


def lay_out(method: str, vectors: np.ndarray, directory: Path | None = None) -> np.ndarray:
    if method == "imgembed":  # the product's path: the index's own neighbours, PCA start, no cache
        from imgembed.api.mapping import index_map

        for stale in directory.glob("map.*.npz"):
            stale.unlink()
        return index_map(directory).xy
    if method == "pca":
        centred = vectors - vectors.mean(0)
        return centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    if method == "umap":
        import umap

        return umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0).fit_transform(vectors)
    if method == "umap-parallel":  # no seed: numba's threads, not reproducible
        import umap

        return umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", n_jobs=-1).fit_transform(vectors)
    if method == "tsne":
        from openTSNE import TSNE

        return np.asarray(TSNE(perplexity=30, metric="cosine", n_jobs=-1, random_state=0).fit(vectors))
    raise ValueError(method)


METHODS = ("pca", "umap", "umap-parallel", "tsne", "imgembed")


def measure(vectors: np.ndarray, codes: np.ndarray, repeats: int, directory: Path) -> dict:
    from sklearn.manifold import trustworthiness

    space = neighbours(vectors, K, cosine=True)
    out = {"images": len(vectors), "classes": int(codes.max() + 1), "space_label_agreement": vote_accuracy(space, codes)}
    for method in METHODS:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            xy = lay_out(method, vectors, directory)
            times.append(time.perf_counter() - start)
        flat = neighbours(np.asarray(xy, np.float64), K, cosine=False)
        kept = np.mean([len(set(a) & set(b)) / K for a, b in zip(space, flat)])
        out[method] = {"trustworthiness": float(trustworthiness(vectors, xy, n_neighbors=K, metric="cosine")),
                       "knn_kept": float(kept), "label_agreement": vote_accuracy(flat, codes),
                       "seconds": float(min(times))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    from imgembed.api import load_model

    model = load_model()
    warm = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
    for method in METHODS[:-1]:  # imports and numba's compilation outside the timings
        lay_out(method, warm)
    results = {}
    for name in args.sets:
        directory = index(name, model)
        if directory is None:
            print(f"{name}: not available here, skipped")
            continue
        vectors, codes = stored(directory)
        results[name] = measure(vectors, codes, args.repeats, directory)
        r = results[name]
        print(f"\n{name}: {r['images']} images, {r['classes']} classes; label agreement in the embedding space "
              f"{r['space_label_agreement']:.3f}")
        print(f"{'method':<14} {'trust':>7} {'kNN kept':>9} {'labels':>7} {'seconds':>8}")
        for method in METHODS:
            m = r[method]
            print(f"{method:<14} {m['trustworthiness']:7.3f} {m['knn_kept']:9.3f} {m['label_agreement']:7.3f} "
                  f"{m['seconds']:8.2f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
