"""`imgembed clusters`: which clustering, and how many clusters, on labelled sets with the labels hidden.

    .venv/bin/python bench/clusters.py [--sets clipart clipart-top fashion digits photos]

The sets are indexed as bench/map_layout.py indexes them (bench/data/map/<set>/index); clipart-top
is clipart's vectors scored against its coarser top-level folders (the same images, so every
method's clustering of them is computed once). Each method clusters the stored vectors without
the labels, choosing the number of clusters itself:

- kmeans-silhouette: spherical k-means (FAISS) for k on a grid from 2 to about sqrt(2n), k
  where the mean cosine silhouette is highest;
- agglo-average@t: average-linkage agglomerative clustering on cosine distance (scikit-learn),
  cut at one linkage distance t for every set;
- agglo-ward-silhouette: Ward linkage on the unit vectors, cut at the k of best silhouette;
- hdbscan: scikit-learn's HDBSCAN (min_cluster_size 5) on the unit vectors; its noise counts as
  one more cluster (what a user would see as "unclustered");
- louvain-networkx: networkx's Louvain on the same neighbour graph as ours (k 10, resolution 1),
  the reference for our implementation;
- ours k=K r=R: :func:`imgembed.collection.clusters.cluster`, what the command runs, on a grid
  of the graph's neighbours K and the resolution R, with three seeds (the order in which Louvain
  visits the nodes) and the scores averaged; ``ours sample n/3`` clusters a third of the
  images and assigns the rest by nearest mean direction (the path above CLUSTER_SAMPLE images), at
  the defaults in imgembed/config.py.

Small collections: each set is also cut into small subsets (``SMALL``: 5 classes x 8 images, 4 x
10, 8 x 12; five seeded draws each), clustered by ours at the chosen resolution with the graph's
neighbours fixed at 5, 10 or 20, or by the rule of :func:`imgembed.collection.clusters.neighbours_for`
(about sqrt(n), at most CLUSTER_K): a vector can only join a cluster holding enough of its
neighbours, so a fixed 20 breaks classes of 8 apart.

Uneven collections: the labelled sets have classes of about one size, which a folder seldom has.
Each set is also drawn into uneven subsets (``UNEVEN_*``: 6 classes of 120, 60, 30, 15, 8 and 4
images, the largest about half; four seeded draws), clustered by ours on the same grid. A high
resolution splits any cluster that holds much of the graph's weight, so it breaks the largest
class apart here.

Measured against the hidden labels: adjusted Rand index (ARI), normalised mutual information
(NMI), clusters chosen against the classes, seconds. The setting of ours is chosen by mean ARI on
the tuning sets (clipart, fashion), the whole sets and their uneven subsets counting alike, and confirmed on the held-out ones (digits, photos; clipart-top
shares clipart's images and is shown apart). Results: bench/data/map/clusters.json and the tables
printed (docs/quality.md, "Clusters").
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from map_layout import OUT, index, stored

from imgembed.config import CLUSTER_K, CLUSTER_RESOLUTION

SETS = ("clipart", "clipart-top", "fashion", "digits", "photos")
TUNING = ("clipart", "fashion")
HELD_OUT = ("digits", "photos")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
GRID_K = (5, 10, 20)
GRID_RESOLUTION = (0.5, 1.0, 2.0)
SMALL = ((5, 8), (4, 10), (8, 12))  # (classes, images per class) of the small subsets
SMALL_DRAWS = 5
SMALL_RULES = ("k=5", "k=10", "k=20", "sqrt rule")
SEEDS = (0, 1, 2)  # ours is run with each (the order Louvain visits the nodes in) and the scores averaged
UNEVEN_CLASSES, UNEVEN_LARGEST, UNEVEN_DRAWS = 6, 120, 4  # uneven subsets: 6 classes of 120, 60, 30, 15, 8, 4


def k_grid(n: int) -> list[int]:
    top = max(2, min(n - 1, int(np.sqrt(2 * n))))
    grid = sorted({int(round(x)) for x in np.geomspace(2, top, 14)})
    return [k for k in grid if 2 <= k < n]


def silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(vectors, labels, metric="cosine", sample_size=min(len(vectors), 3000),
                                  random_state=0))


def spherical_kmeans(vectors: np.ndarray, k: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(vectors.shape[1], k, niter=25, nredo=3, spherical=True, seed=0, verbose=False,
                      min_points_per_centroid=1)
    km.train(vectors)
    return km.index.search(vectors, 1)[1].ravel()


def kmeans_silhouette(vectors: np.ndarray) -> np.ndarray:
    best = max(((silhouette(vectors, labels := spherical_kmeans(vectors, k)), labels) for k in k_grid(len(vectors))),
               key=lambda t: t[0])
    return best[1]


def agglo_average(vectors: np.ndarray, threshold: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                   distance_threshold=threshold).fit_predict(vectors)


def agglo_ward_silhouette(vectors: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import cut_tree
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=None, linkage="ward", distance_threshold=0.0, compute_full_tree=True)
    model.fit(vectors)
    n = len(vectors)
    counts = np.zeros(len(model.children_))
    for i, (a, b) in enumerate(model.children_):
        counts[i] = (1 if a < n else counts[a - n]) + (1 if b < n else counts[b - n])
    linkage = np.column_stack([model.children_, model.distances_, counts]).astype(float)
    best = None
    for k in k_grid(n):
        labels = cut_tree(linkage, n_clusters=k).ravel()
        s = silhouette(vectors, labels)
        if best is None or s > best[0]:
            best = (s, labels)
    return best[1]


def hdbscan(vectors: np.ndarray) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return HDBSCAN(min_cluster_size=5).fit_predict(vectors)


def louvain_networkx(vectors: np.ndarray) -> np.ndarray:
    import networkx as nx

    from imgembed.collection.clusters import knn_graph

    n, edges, weights = knn_graph(vectors, 10)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_weighted_edges_from((int(a), int(b), float(w)) for (a, b), w in zip(edges, weights))
    labels = np.zeros(n, np.int64)
    for c, members in enumerate(nx.community.louvain_communities(graph, weight="weight", resolution=1.0, seed=0)):
        labels[list(members)] = c
    return labels


def ours(vectors: np.ndarray, k: int, resolution: float, sample: int | None = None, seed: int = 0) -> np.ndarray:
    from imgembed.collection.clusters import cluster

    return cluster(vectors, k=k, resolution=resolution, seed=seed, **({"sample": sample} if sample else {})).labels


class Seeds:
    """A method run once per seed of :data:`SEEDS`: its scores are the means over the runs."""

    def __init__(self, fn):
        self.fn = fn


def methods():
    """(name, function of the vectors) in the order of the tables."""
    out = [("kmeans-silhouette", kmeans_silhouette)]
    out += [(f"agglo-average@{t}", lambda v, t=t: agglo_average(v, t)) for t in THRESHOLDS]
    out += [("agglo-ward-silhouette", agglo_ward_silhouette), ("hdbscan", hdbscan),
            ("louvain-networkx", louvain_networkx)]
    out += [(f"ours k={k} r={r}", Seeds(lambda v, seed, k=k, r=r: ours(v, k, r, seed=seed)))
            for k in GRID_K for r in GRID_RESOLUTION]
    out.append(("ours sample n/3", Seeds(lambda v, seed: ours(v, CLUSTER_K, CLUSTER_RESOLUTION, len(v) // 3, seed))))
    return out


def score(labels: np.ndarray, truth: np.ndarray, seconds: float) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"ari": float(adjusted_rand_score(truth, labels)), "nmi": float(normalized_mutual_info_score(truth, labels)),
            "clusters": int(len(np.unique(labels))), "seconds": seconds}


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run(fn, vectors: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """[(labels, seconds)]: one run, or one per seed for a :class:`Seeds` method."""
    if isinstance(fn, Seeds):
        return [timed(fn.fn, vectors, seed) for seed in SEEDS]
    return [timed(fn, vectors)]


def scores(runs: list[tuple[np.ndarray, float]], truth: np.ndarray) -> dict:
    each = [score(labels, truth, seconds) for labels, seconds in runs]
    out = {key: float(np.mean([e[key] for e in each])) for key in ("ari", "nmi", "clusters", "seconds")}
    if len(each) > 1:
        out["ari_per_seed"] = [e["ari"] for e in each]
    else:
        out["clusters"] = int(out["clusters"])
    return out


def top_level(directory) -> np.ndarray:
    """clipart's label codes by top-level folder (class names are ``top__sub__...``), in id order."""
    from imgembed.collection.audit import label_codes
    from imgembed.index import ImageIndex

    with ImageIndex.open(directory) as idx:
        ids = np.concatenate([i for i, _ in idx.store.iter_vectors()])
        rows = idx.store.rows_by_id(ids.tolist())
    return label_codes([rows[int(i)].label.split("__")[0] for i in ids])[0]


def table(name: str, r: dict) -> None:
    print(f"\n{name}: {r['images']} images, {r['classes']} classes")
    print(f"{'method':<24} {'ARI':>6} {'NMI':>6} {'clusters':>8} {'seconds':>8}  ARI per seed")
    for method, m in r.items():
        if isinstance(m, dict):
            count = f"{m['clusters']:8d}" if isinstance(m["clusters"], int) else f"{m['clusters']:8.1f}"
            seeds = " ".join(f"{a:.3f}" for a in m.get("ari_per_seed", ()))
            print(f"{method:<24} {m['ari']:6.3f} {m['nmi']:6.3f} {count} {m['seconds']:8.2f}  {seeds}")


def summary(results: dict, uneven: dict) -> dict:
    """Mean ARI over the tuning and the held-out sets per method; the setting of ours chosen on
    tuning, by the mean of its ARI on the whole sets and on their uneven subsets."""
    tuning = [s for s in TUNING if s in results]
    held = [s for s in HELD_OUT if s in results]
    names = [m for m in results[next(iter(results))] if isinstance(results[next(iter(results))][m], dict)]
    rows = {m: {"tuning": float(np.mean([results[s][m]["ari"] for s in tuning])) if tuning else None,
                "held_out": float(np.mean([results[s][m]["ari"] for s in held])) if held else None}
            for m in names if all(m in results[s] for s in tuning + held)}
    for m in rows:
        if m.startswith("ours k="):
            for part, sets in (("uneven_tuning", tuning), ("uneven_held_out", held)):
                got = [uneven[s][m] for s in sets if m in uneven.get(s, {})]
                rows[m][part] = float(np.mean(got)) if got else None
    both = lambda m: (rows[m]["tuning"] + rows[m]["uneven_tuning"]) / 2  # noqa: E731
    grid = [m for m in rows if m.startswith("ours k=") and rows[m]["tuning"] is not None
            and rows[m].get("uneven_tuning") is not None]
    chosen = max(grid, key=both) if grid else None
    print(f"\nmean ARI: tuning ({', '.join(tuning)}) and held out ({', '.join(held)})")
    print(f"{'method':<24} {'tuning':>7} {'held-out':>9}" + "".join(f" {s:>11}" for s in results))
    for m, v in rows.items():
        fmt = lambda x: f"{x:.3f}" if x is not None else "-"  # noqa: E731
        mark = "  <- chosen on tuning" if m == chosen else ""
        print(f"{m:<24} {fmt(v['tuning']):>7} {fmt(v['held_out']):>9}"
              + "".join(f" {results[s][m]['ari']:11.3f}" if m in results[s] else f" {'-':>11}" for s in results)
              + mark)
    if grid:
        print(f"\nours on the whole sets and on uneven subsets ({UNEVEN_CLASSES} classes of {UNEVEN_LARGEST} halving, "
              f"{UNEVEN_DRAWS} draws): mean ARI")
        print(f"{'setting':<24} {'tuning':>7} {'uneven':>7} {'both':>7} {'held-out':>9} {'uneven':>7} {'both':>7}")
        for m in grid:
            v = rows[m]
            print(f"{m:<24} {v['tuning']:7.3f} {v['uneven_tuning']:7.3f} {both(m):7.3f} {v['held_out']:9.3f} "
                  f"{v['uneven_held_out']:7.3f} {(v['held_out'] + v['uneven_held_out']) / 2:7.3f}"
                  + ("  <- chosen on tuning" if m == chosen else ""))
    return {"tuning_sets": tuning, "held_out_sets": held, "mean_ari": rows, "chosen": chosen}


def small_subsets(vectors: np.ndarray, truth: np.ndarray) -> dict:
    """Mean ARI per rule for the graph's neighbours over the small subsets of one set (at the
    default resolution); shapes with more classes than the set has are left out."""
    from sklearn.metrics import adjusted_rand_score

    from imgembed.collection.clusters import cluster, neighbours_for

    rng = np.random.default_rng(1)
    found: dict = {rule: [] for rule in SMALL_RULES}
    for classes, per_class in SMALL:
        present = [c for c in range(truth.max() + 1) if (truth == c).sum() >= per_class]
        if len(present) < classes:
            continue
        for _ in range(SMALL_DRAWS):
            chosen = rng.choice(present, classes, replace=False)
            pick = np.concatenate([rng.choice(np.flatnonzero(truth == c), per_class, replace=False) for c in chosen])
            for rule in SMALL_RULES:
                k = neighbours_for(len(pick), CLUSTER_K) if rule == "sqrt rule" else int(rule[2:])
                # an explicit k below the rule's is what cluster() uses for that k: pin it by sample size
                labels = cluster(vectors[pick], k=k, resolution=CLUSTER_RESOLUTION).labels if rule == "sqrt rule" \
                    else ours_fixed_k(vectors[pick], k)
                found[rule].append(float(adjusted_rand_score(truth[pick], labels)))
    return {rule: float(np.mean(v)) for rule, v in found.items() if v}


def uneven_subsets(vectors: np.ndarray, truth: np.ndarray) -> dict:
    """Mean ARI of each setting of ours on the grid over the uneven subsets of one set."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(2)
    sizes = [max(4, UNEVEN_LARGEST >> i) for i in range(UNEVEN_CLASSES)]
    found: dict = {}
    for _ in range(UNEVEN_DRAWS):
        chosen = rng.choice(truth.max() + 1, min(UNEVEN_CLASSES, truth.max() + 1), replace=False)
        pick = np.concatenate([rng.choice(members, min(size, len(members)), replace=False)
                               for c, size in zip(chosen, sizes) for members in [np.flatnonzero(truth == c)]])
        for k in GRID_K:
            for r in GRID_RESOLUTION:
                labels = ours(vectors[pick], k, r)
                found.setdefault(f"ours k={k} r={r}", []).append(float(adjusted_rand_score(truth[pick], labels)))
    return {m: float(np.mean(v)) for m, v in found.items()}


def ours_fixed_k(vectors: np.ndarray, k: int) -> np.ndarray:
    """Ours with exactly ``k`` neighbours per vector (no small-collection rule)."""
    from imgembed.collection.clusters import _finish, communities, knn_graph

    return _finish(vectors, communities(*knn_graph(vectors, k), resolution=CLUSTER_RESOLUTION,
                                        rng=np.random.default_rng(0))).labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    args = parser.parse_args()
    from imgembed.api import load_model

    model = load_model()
    results: dict = {}
    small: dict = {}
    uneven: dict = {}
    done: dict = {}  # vectors' set -> {method: (labels, seconds)}: clipart-top reuses clipart's
    for name in args.sets:
        source = "clipart" if name == "clipart-top" else name
        directory = index(source, model)
        if directory is None:
            print(f"{name}: not available here, skipped")
            continue
        vectors, truth = stored(directory)
        if name == "clipart-top":
            truth = top_level(directory)
        r = results[name] = {"images": len(vectors), "classes": int(truth.max() + 1)}
        runs = done.setdefault(source, {})
        for method, fn in methods():
            if method not in runs:
                runs[method] = run(fn, vectors)
            r[method] = scores(runs[method], truth)
        table(name, r)
        if name != "clipart-top":
            small[name] = small_subsets(vectors, truth)
            uneven[name] = uneven_subsets(vectors, truth)
    out = {"sets": results, "uneven": uneven, "summary": summary(results, uneven)} if results else {"sets": {}}
    if small:
        print(f"\nsmall subsets ({', '.join(f'{c} x {p}' for c, p in SMALL)} images, {SMALL_DRAWS} draws each): "
              f"mean ARI, resolution {CLUSTER_RESOLUTION}")
        print(f"{'neighbours':<12}" + "".join(f" {s:>9}" for s in small))
        for rule in SMALL_RULES:
            print(f"{rule:<12}" + "".join(f" {small[s].get(rule, float('nan')):9.3f}" for s in small))
        out["small"] = small
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "clusters.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
