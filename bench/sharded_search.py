"""The cost of searching several indexes as one, against one index holding the same vectors.

    .venv/bin/python bench/sharded_search.py [--n 200000] [--dim 128] [--shards 2 4]

Builds (through `ImageIndex`, flat, as `imgembed index` with the default type does below
200,000 images) one index of N clustered unit vectors and, for each shard count S, S indexes
holding the same vectors split evenly. Then `Searcher.search_vectors` (FAISS search, merge, and
the SQLite row lookups `search` prints from) for 200 single queries and one batch of 100, k=10,
on the one index and on the S shards: median latency and the ratio. Also checks the merged hits
equal the single index's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from recall_check import make  # noqa: E402

from common import commit_rows  # noqa: E402


def build(directory: Path, identity: dict, vectors: np.ndarray, offset: int) -> None:
    from imgembed.index.store import NewImage

    commit_rows(directory, identity, {}, [NewImage("/bench", f"{offset + i}", None, 0, 0, "", 1, 1, v)
                                          for i, v in enumerate(vectors)], "flat")


def timed(searcher, queries: np.ndarray) -> tuple[float, float, list]:
    singles = []
    for q in queries[:200]:
        t = time.perf_counter()
        searcher.search_vectors(q[None, :], 10)
        singles.append(time.perf_counter() - t)
    t = time.perf_counter()
    hits = searcher.search_vectors(queries[:100], 10)
    return statistics.median(singles) * 1e3, (time.perf_counter() - t) * 1e3, hits


def main() -> None:
    from imgembed.api import Searcher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    vectors = make("crowded", args.n + 200, args.dim, seed=0)
    base, queries = vectors[:args.n], vectors[args.n:]
    identity = {"backbone": "bench:sharded", "weights": "none", "head": None, "checkpoint": None, "dim": args.dim,
                "preprocess": {"resize": 1, "crop": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}}
    model = SimpleNamespace(identity=identity)
    with tempfile.TemporaryDirectory(dir=HERE / "data") as tmp:
        tmp = Path(tmp)
        build(tmp / "one", identity, base, 0)
        with Searcher(tmp / "one", model) as s:
            one_single, one_batch, expected = timed(s, queries)
        print(f"{args.n:,} vectors of {args.dim}-d, k=10: one index {one_single:.2f} ms a query, "
              f"{one_batch:.1f} ms for 100")
        for shards in args.shards:
            dirs = []
            for j, part in enumerate(np.array_split(np.arange(args.n), shards)):
                dirs.append(tmp / f"s{shards}-{j}")
                build(dirs[-1], identity, base[part], int(part[0]))
            with Searcher(dirs, model) as s:
                single, batch, hits = timed(s, queries)
            same = all([h.row.path for h in a] == [h.row.path for h in b] for a, b in zip(hits, expected))
            print(f"  {shards} shards: {single:.2f} ms a query ({single / one_single:.2f}x), {batch:.1f} ms for 100 "
                  f"({batch / one_batch:.2f}x); same hits as one index: {same}")
            for d in dirs:
                shutil.rmtree(d)


if __name__ == "__main__":
    main()
