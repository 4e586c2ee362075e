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

Folders are seldom like the labelled sets, so each set is also drawn into subsets, and ours is
run on the same grid on each: uneven ones (``UNEVEN_*``: 6 classes of 120, 60, 30, 15, 8 and 4
images, the largest about half; four seeded draws) and small ones (``SMALL``: 5 classes x 8
images, 4 x 10, 8 x 12; five seeded draws each). A high resolution splits any cluster that holds
much of the graph's weight, so it breaks the largest class of an uneven folder apart; a low one
merges the classes of a small folder. On the small subsets the graph's neighbours are also
compared at the default resolution: fixed at 5, 10 or 20, or by the rule of
:func:`imgembed.collection.clusters.neighbours_for` (about sqrt(n), at most CLUSTER_K).

Measured against the hidden labels: adjusted Rand index (ARI), normalised mutual information
(NMI), clusters chosen against the classes, seconds. The setting of ours is chosen by mean ARI on
the tuning sets (clipart, fashion), the whole sets, their uneven and their small subsets counting
alike, among resolutions up to 1 (above it, cutting a compact group that holds half of a folder
into two random halves raises modularity), and confirmed on the held-out ones (digits, photos; clipart-top
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
GRID_RESOLUTION = (0.5, 1.0, 1.5, 2.0)
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


def summary(results: dict, uneven: dict, small: dict) -> dict:
    """Mean ARI over the tuning and the held-out sets per method; the setting of ours chosen on
    tuning, by the mean of its ARI on the whole sets, their uneven and their small subsets."""
    tuning = [s for s in TUNING if s in results]
    held = [s for s in HELD_OUT if s in results]
    names = [m for m in results[next(iter(results))] if isinstance(results[next(iter(results))][m], dict)]
    rows = {m: {"tuning": float(np.mean([results[s][m]["ari"] for s in tuning])) if tuning else None,
                "held_out": float(np.mean([results[s][m]["ari"] for s in held])) if held else None}
            for m in names if all(m in results[s] for s in tuning + held)}
    regimes = {"uneven": uneven, "small": small}
    for m in rows:
        if m.startswith("ours k="):
            for regime, found in regimes.items():
                for part, sets in (("tuning", tuning), ("held_out", held)):
                    got = [found[s][m] for s in sets if m in found.get(s, {})]
                    rows[m][f"{regime}_{part}"] = float(np.mean(got)) if got else None
    overall = lambda m, part: float(np.mean([rows[m][part], rows[m][f"uneven_{part}"], rows[m][f"small_{part}"]]))  # noqa: E731
    grid = [m for m in rows if m.startswith("ours k=") and rows[m]["tuning"] is not None
            and rows[m].get("uneven_tuning") is not None and rows[m].get("small_tuning") is not None]
    # above resolution 1, splitting a compact group that holds much of the graph's weight in two
    # halves raises modularity, so a folder that is mostly one thing is cut apart at random
    # (tests/test_clusters.py); the default is chosen among the settings that keep such a group whole
    whole = [m for m in grid if float(m.rsplit("r=", 1)[1]) <= 1.0]
    chosen = max(whole, key=lambda m: overall(m, "tuning")) if whole else None
    print(f"{'method':<24} {'tuning':>7} {'held-out':>9}" + "".join(f" {s:>11}" for s in results))
    for m, v in rows.items():
        fmt = lambda x: f"{x:.3f}" if x is not None else "-"  # noqa: E731
        print(f"{m:<24} {fmt(v['tuning']):>7} {fmt(v['held_out']):>9}"
              + "".join(f" {results[s][m]['ari']:11.3f}" if m in results[s] else f" {'-':>11}" for s in results))
    if grid:
        print(f"\nours on the whole sets, uneven subsets ({UNEVEN_CLASSES} classes of {UNEVEN_LARGEST} halving, "
              f"{UNEVEN_DRAWS} draws) and small ones ({', '.join(f'{c} x {p}' for c, p in SMALL)}, {SMALL_DRAWS} "
              "draws each): mean ARI; chosen by the mean of the three on the tuning sets, resolution at most 1")
        print(f"{'setting':<20}" + "".join(f" {h:>8}" for h in ("whole", "uneven", "small", "mean")) + "  |"
              + "".join(f" {h:>8}" for h in ("whole", "uneven", "small", "mean")) + "   (tuning | held out)")
        for m in grid:
            v = rows[m]
            print(f"{m:<20}" + "".join(f" {v[p]:8.3f}" for p in ("tuning", "uneven_tuning", "small_tuning"))
                  + f" {overall(m, 'tuning'):8.3f}  |"
                  + "".join(f" {v[p]:8.3f}" for p in ("held_out", "uneven_held_out", "small_held_out"))
                  + f" {overall(m, 'held_out'):8.3f}" + ("  <- chosen" if m == chosen else ""))
    return {"tuning_sets": tuning, "held_out_sets": held, "mean_ari": rows, "chosen": chosen}


def small_draws(truth: np.ndarray) -> list[np.ndarray]:
    """The small subsets of one set (positions): ``SMALL`` shapes, ``SMALL_DRAWS`` seeded draws
    each; shapes with more classes than the set has are left out."""
    rng = np.random.default_rng(1)
    out = []
    for classes, per_class in SMALL:
        present = [c for c in range(truth.max() + 1) if (truth == c).sum() >= per_class]
        if len(present) < classes:
            continue
        for _ in range(SMALL_DRAWS):
            chosen = rng.choice(present, classes, replace=False)
            out.append(np.concatenate([rng.choice(np.flatnonzero(truth == c), per_class, replace=False) for c in chosen]))
    return out


def uneven_draws(truth: np.ndarray) -> list[np.ndarray]:
    """The uneven subsets of one set (positions): ``UNEVEN_CLASSES`` classes of ``UNEVEN_LARGEST``
    images halving (at least 4), ``UNEVEN_DRAWS`` seeded draws."""
    rng = np.random.default_rng(2)
    sizes = [max(4, UNEVEN_LARGEST >> i) for i in range(UNEVEN_CLASSES)]
    out = []
    for _ in range(UNEVEN_DRAWS):
        chosen = rng.choice(truth.max() + 1, min(UNEVEN_CLASSES, truth.max() + 1), replace=False)
        out.append(np.concatenate([rng.choice(members, min(size, len(members)), replace=False)
                                   for c, size in zip(chosen, sizes) for members in [np.flatnonzero(truth == c)]]))
    return out


def grid_on(vectors: np.ndarray, truth: np.ndarray, draws: list[np.ndarray]) -> dict:
    """Mean ARI of each setting of ours on the grid (the product's path: :func:`cluster`, whose
    neighbours follow :func:`neighbours_for` in a small collection) over the subsets ``draws``."""
    from sklearn.metrics import adjusted_rand_score

    found: dict = {}
    for pick in draws:
        for k in GRID_K:
            for r in GRID_RESOLUTION:
                found.setdefault(f"ours k={k} r={r}", []).append(
                    float(adjusted_rand_score(truth[pick], ours(vectors[pick], k, r))))
    return {m: float(np.mean(v)) for m, v in found.items()}


def k_rules(vectors: np.ndarray, truth: np.ndarray, draws: list[np.ndarray]) -> dict:
    """Mean ARI per rule for the graph's neighbours over the small subsets of one set, at the
    default resolution: a fixed 5, 10 or 20, or :func:`neighbours_for`'s."""
    from sklearn.metrics import adjusted_rand_score

    from imgembed.collection.clusters import cluster

    found: dict = {rule: [] for rule in SMALL_RULES}
    for pick in draws:
        for rule in SMALL_RULES:
            labels = cluster(vectors[pick], k=CLUSTER_K, resolution=CLUSTER_RESOLUTION).labels if rule == "sqrt rule" \
                else ours_fixed_k(vectors[pick], int(rule[2:]))
            found[rule].append(float(adjusted_rand_score(truth[pick], labels)))
    return {rule: float(np.mean(v)) for rule, v in found.items() if v}


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
    rules: dict = {}
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
            uneven[name] = grid_on(vectors, truth, uneven_draws(truth))
            small[name] = grid_on(vectors, truth, small_draws(truth))
            rules[name] = k_rules(vectors, truth, small_draws(truth))
    out = {"sets": results, "uneven": uneven, "small": small, "summary": summary(results, uneven, small)} \
        if results else {"sets": {}}
    if rules:
        print(f"\nsmall subsets: mean ARI by the graph's neighbours, resolution {CLUSTER_RESOLUTION}")
        print(f"{'neighbours':<12}" + "".join(f" {s:>9}" for s in rules))
        for rule in SMALL_RULES:
            print(f"{rule:<12}" + "".join(f" {rules[s].get(rule, float('nan')):9.3f}" for s in rules))
        out["small_k_rules"] = rules
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "clusters.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
