"""Search at scale: build time, memory, Recall@10 and speed of each index type.

    .venv/bin/python bench/search_scale.py [--sizes 100000 1000000] [--dim 128]

Synthetic data: unit vectors drawn around 2,000 random cluster centres (seeded), with Gaussian
noise of norm 0.6, which gives neighbourhoods like those of real embeddings (at 100,000 x 128
the mean cosine to the 1st/10th neighbour is about 0.80/0.76; for the 11k cached real
EfficientNet-Lite0 features below it is 0.84/0.77); 1,000 queries from the same distribution,
not in the base. Recall@10 is measured against exact (flat) search.
With --real, also on real embeddings: the feature vectors bench/fashion_mnist.py and
bench/open_set.py cached under bench/data/cache (1280-d).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from imgembed.index import vectors

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import clusters  # noqa: E402


def clustered(n: int, dim: int, seed: int, centres: int = 2000, noise: float = 0.6) -> np.ndarray:
    return clusters(n, dim, np.random.default_rng(seed), noise, centres=centres, chunk=200_000)


def real_embeddings() -> np.ndarray:
    files = sorted((HERE / "data" / "cache").rglob("*.npy"))
    if not files:
        raise SystemExit("no cached features: run bench/fashion_mnist.py first")
    v = np.stack([np.load(f)[0].astype(np.float32) for f in files])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def measure(name: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, index_type: str) -> None:
    n, dim = base.shape
    spec = vectors.choose(index_type, n, dim)
    t0 = time.perf_counter()
    index = vectors.build_index(dim, np.arange(n, dtype=np.int64), base, spec.factory, params=spec.params)
    build = time.perf_counter() - t0
    size = faiss.serialize_index(index).nbytes
    index.search(queries[:10], 10)
    t0 = time.perf_counter()
    _, ids = index.search(queries, 10)
    batch_qps = len(queries) / (time.perf_counter() - t0)
    lat = []
    for q in queries[:200]:
        t0 = time.perf_counter()
        index.search(q[None], 10)
        lat.append(time.perf_counter() - t0)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
    label = index_type if spec.index_type == index_type and index_type in vectors.INDEX_TYPES[1:] else \
        f"{index_type} -> {spec.factory}"
    print(f"{name:<14} {label:<34} build {build:7.1f} s  {size / n:7.0f} B/vector  recall@10 {recall:.3f}  "
          f"{batch_qps:8.0f} q/s batched  {np.median(lat) * 1e3:6.2f} ms/query single")


def run(name: str, base: np.ndarray, queries: np.ndarray, types) -> None:
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    _, truth = exact.search(queries, 10)
    for t in types:
        measure(name, base, queries, truth, t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--real", action="store_true")
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    for n in args.sizes:
        data = clustered(n + 1000, args.dim, seed=n)
        run(f"{n:,} x {args.dim}", data[1000:], data[:1000], ["flat", "hnsw", "ivfpq", "auto"])
    if args.real:
        v = real_embeddings()
        rng = np.random.default_rng(0)
        order = rng.permutation(len(v))
        q, b = v[order[:500]], v[order[500:]]
        run(f"real {len(b):,} x {v.shape[1]}", b, q, ["flat", "hnsw", "ivfpq"])


if __name__ == "__main__":
    main()
