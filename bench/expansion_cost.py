"""What search expansion costs: keeping the neighbour lists, and searching with them.

    .venv/bin/python bench/expansion_cost.py [--sizes 10000 50000] [--dim 1280]

For each size, an in-RAM index (``auto``: exact at these sizes) of clustered synthetic unit
vectors (bench/search_scale.py's generator) at the default model's dimension is built through
``ImageIndex`` twice, with today's expansion and without (``expansion=NONE``), in the same run:

- ``save`` after the whole collection: the first save of an index run, where every list is
  made (one search of depth k + 1 per image); against the save without expansion;
- growing by 1% (one commit, then save): the lists of the new images and of the images they
  now count among the nearest of (exact: every stored vector compared with the new ones);
- removing 1%: the lists naming a removed image are made again;
- one query vector searched, ``k`` = 10, median of 200: raw against expanded (a raw search of
  the shortlist, the stored and augmented vectors of its candidates read from SQLite, twice
  with query expansion).

The embedding the images would need is not part of it: the default model embeds about 20-60
images a second on 2 cores (docs/performance.md), so a list made costs what embedding one image
costs when that figure is under 1/20 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from search_scale import clustered  # noqa: E402

from imgembed.index import ImageIndex  # noqa: E402
from imgembed.index.expansion import DEFAULT, NONE  # noqa: E402
from imgembed.index.store import NewImage  # noqa: E402


def rows(vectors: np.ndarray, start: int) -> list[NewImage]:
    return [NewImage("/bench", f"{start + i:08d}", None, 0, 0, "", 1, 1, v) for i, v in enumerate(vectors)]


def measure(directory: Path, vectors: np.ndarray, more: np.ndarray, queries: np.ndarray, expansion) -> dict:
    identity = {"backbone": "bench:expansion", "weights": "none", "head": None, "checkpoint": None,
                "dim": vectors.shape[1], "preprocess": {"resize": 1, "crop": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}}
    out = {}
    with ImageIndex.open_for_write(directory, identity, {}, "auto", expansion=expansion) as idx:
        idx.commit(add=rows(vectors, 0))
        t0 = time.perf_counter()
        idx.save()
        out["save_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        idx.commit(add=rows(more, len(vectors)))
        idx.save()
        out["grow_s"] = time.perf_counter() - t0
        gone = idx.store.ids()[::100]
        t0 = time.perf_counter()
        idx.commit(remove=gone.tolist())
        idx.save()
        out["shrink_s"] = time.perf_counter() - t0
    with ImageIndex.open(directory) as idx:
        e = idx.expansion
        idx.search(queries[:1], 10, expansion=e)
        lat = []
        for q in queries:
            t0 = time.perf_counter()
            idx.search(q[None], 10, expansion=e)
            lat.append(time.perf_counter() - t0)
        out["query_ms"] = statistics.median(lat) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000])
    parser.add_argument("--dim", type=int, default=1280)
    args = parser.parse_args()
    print(f"expansion: {DEFAULT.describe()}")
    print("| images | first save (lists made) | grow 1% | shrink 1% | query (k=10, median) |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        data = clustered(n + n // 100 + 200, args.dim, seed=3)
        vectors, more, queries = data[:n], data[n:n + n // 100], data[-200:]
        got = {}
        for name, e in (("raw", NONE), ("expanded", DEFAULT)):
            directory = Path(tempfile.mkdtemp(prefix=f"expansion-{name}-"))
            try:
                got[name] = measure(directory, vectors, more, queries, e)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        r, x = got["raw"], got["expanded"]
        print(f"| {n:,} | {x['save_s']:.1f} s vs {r['save_s']:.1f} s ({x['save_s'] / n * 1e3:.2f} ms an image) | "
              f"{x['grow_s']:.2f} s vs {r['grow_s']:.2f} s | {x['shrink_s']:.2f} s vs {r['shrink_s']:.2f} s | "
              f"{x['query_ms']:.1f} ms vs {r['query_ms']:.1f} ms ({x['query_ms'] / r['query_ms']:.1f}x) |", flush=True)


if __name__ == "__main__":
    main()
