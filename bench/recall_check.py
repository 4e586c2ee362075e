"""Does the self-check hold? Approximate indexes tuned on their own vectors, verified on queries
they never saw, over collections with different neighbourhood structures.

    .venv/bin/python bench/recall_check.py [--n 100000] [--dim 128] [--types hnsw ivfpq ondisk]
    .venv/bin/python bench/recall_check.py --n 1000000 --sets crowded --types ivfpq hnsw

For each set and index type: build an index directory through `ImageIndex` (as `imgembed index`
does), which measures Recall@10 on 500 of the stored vectors and tunes its search parameters to
0.95 (imgembed.index.recall). Then, independently: 1,000 held-out queries from the same distribution
(not in the index), their exact top 10 by brute force, and the same queries through
`ImageIndex.search`: the Recall@10 a user gets. Single-query latency through FAISS at the tuned
setting against exact search over the same vectors (a flat index), median of 200 queries.

Sets (unit vectors):
- uniform: uniform on the sphere (no structure: the hardest case for IVF);
- tight: 2,000 clusters of equal size, noise 0.3 (well separated);
- crowded: 2,000 clusters with power-law (Zipf 1.1) sizes and noise 0.8 (dense neighbourhoods);
- mixture: half uniform, half tight clusters;
- real: EfficientNet-Lite0 features (today's default embedding) of real drawings and photos,
  from bench/data/quality (bench/quality.py) or embedded here from Debian's openclipart-png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import clusters, uniform, unit  # noqa: E402

DATA = HERE / "data" / "recall"


def real(n: int) -> np.ndarray:
    cached = HERE / "data" / "quality" / "features" / "files-pad224.npz"
    if cached.is_file():
        v = np.load(cached)["gem:2"]
    else:
        path = DATA / "clipart-lite0.npy"
        if not path.is_file():
            from imgembed.api import embed, load_model

            files = sorted(Path("/usr/share/openclipart/png").rglob("*.png"))[:5000]
            if not files:
                sys.exit("no real features: run bench/quality.py, or install Debian's openclipart-png")
            DATA.mkdir(parents=True, exist_ok=True)
            np.save(path, embed(load_model(), files))
        v = np.load(path)
    return unit(v[np.random.default_rng(0).permutation(len(v))][:n])


def make(name: str, n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "uniform":
        return uniform(n, dim, rng)
    if name == "tight":
        return clusters(n, dim, rng, 0.3)
    if name == "crowded":
        return clusters(n, dim, rng, 0.8, zipf=1.1)
    if name == "mixture":
        return np.concatenate([uniform(n // 2, dim, rng), clusters(n - n // 2, dim, rng, 0.3)])[rng.permutation(n)]
    raise ValueError(name)


def check(name: str, base: np.ndarray, held_out: np.ndarray, index_type: str) -> dict:
    from imgembed.index import ImageIndex
    from imgembed.index.expansion import NONE
    from imgembed.index.store import NewImage

    n, dim = base.shape
    directory = DATA / f"{name}-{index_type}-{n}"
    shutil.rmtree(directory, ignore_errors=True)
    identity = {"backbone": f"bench:{name}", "weights": "none", "head": None, "checkpoint": None, "dim": dim,
                "preprocess": {"resize": 1, "crop": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}}
    t0 = time.perf_counter()
    with ImageIndex.open_for_write(directory, identity, {}, index_type,
                                   expansion=NONE) as idx:  # raw search is what is measured
        for start in range(0, n, 50_000):
            idx.commit(add=[NewImage("/bench", f"{start + i}", None, 0, 0, "", 1, 1, v)
                            for i, v in enumerate(base[start:start + 50_000])])
        idx.save()
    build_s = time.perf_counter() - t0
    exact = faiss.IndexFlatIP(dim)
    exact.add(base)
    _, truth = exact.search(held_out, 10)
    with ImageIndex.open(directory) as idx:
        got = idx.search(held_out, 10)
        rc = idx.recall_check
        spec = idx.manifest["faiss"]
        ids = np.array([[int(h.row.path) for h in hits] + [-1] * (10 - len(hits)) for hits in got])
        held = sum(len(set(a) & set(b)) for a, b in zip(ids, truth)) / truth.size
        lat_approx, lat_exact = [], []
        for q in held_out[:200]:
            t = time.perf_counter()
            idx.faiss.search(q[None, :], 10)
            lat_approx.append(time.perf_counter() - t)
            t = time.perf_counter()
            exact.search(q[None, :], 10)
            lat_exact.append(time.perf_counter() - t)
    shutil.rmtree(directory, ignore_errors=True)
    row = {"set": name, "type": index_type, "n": n, "dim": dim, "factory": spec["factory"], "params": spec["params"],
           "own_recall": rc.recall if rc else None, "met": rc.met if rc else None, "note": rc.note if rc else "",
           "held_out_recall": round(held, 4), "approx_ms": statistics.median(lat_approx) * 1e3,
           "exact_ms": statistics.median(lat_exact) * 1e3, "build_s": build_s}
    row["speedup"] = row["exact_ms"] / row["approx_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--sets", nargs="+", default=["uniform", "tight", "crowded", "mixture", "real"])
    parser.add_argument("--types", nargs="+", default=["hnsw", "ivfpq", "ondisk"])
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    print(f"{'set':<8} {'type':<7} {'n':>9} {'params':<28} {'own R@10':>8} {'held-out':>8} {'met':>4} "
          f"{'ms':>6} {'exact ms':>8} {'speed-up':>8}")
    rows = []
    for name in args.sets:
        if name == "real":
            vectors = real(args.n + 1000)
        else:
            vectors = make(name, args.n + 1000, args.dim, seed=0)
        base, held_out = vectors[:-1000], vectors[-1000:]
        for index_type in args.types:
            row = check(name, base, held_out, index_type)
            rows.append(row)
            print(f"{name:<8} {index_type:<7} {row['n']:>9,} {row['params']:<28} {row['own_recall'] or 0:>8.3f} "
                  f"{row['held_out_recall']:>8.3f} {'yes' if row['met'] else 'NO':>4} {row['approx_ms']:>6.2f} "
                  f"{row['exact_ms']:>8.2f} {row['speedup']:>7.1f}x" + (f"  ({row['note']})" if row["note"] else ""),
                  flush=True)
    if args.report:
        args.report.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
