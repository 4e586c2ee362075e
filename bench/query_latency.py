"""Query latency: one 12 MP JPEG, end to end, against 1,000,000 vectors; and CLI cold start.

    .venv/bin/python bench/query_latency.py [--vectors 1000000]

Needs a 128-d checkpoint: it uses bench/data/fashion-mnist/models/fmnist-mlp1024-128-triplet.pt
(from bench/fashion_mnist.py). Builds, once, an index directory with that model's identity
holding `--vectors` clustered synthetic vectors (as bench/search_scale.py) plus the 12 MP photos
of bench/index_throughput.py, with `--index-type auto` (so hnsw at this size). Then:

- a `Searcher` (model and index loaded once) answers single queries, each a 12 MP JPEG read
  from disk: median and 90th percentile of decode + embed + search + metadata lookup;
- `imgembed search PHOTO --index DIR` as a new process: process start to printed results;
- the same cold start against the 80-image sample index, and `imgembed info` and `--help`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from search_scale import clustered  # noqa: E402

CHECKPOINT = HERE / "data" / "fashion-mnist" / "models" / "fmnist-mlp1024-128-triplet.pt"


def build(directory: Path, n: int) -> None:
    from imgembed.api import embed, load_model
    from imgembed.index import ImageIndex
    from imgembed.index.expansion import NONE
    from imgembed.index.store import NewImage

    marker = directory / ".complete"
    if marker.is_file() and marker.read_text() == str(n):
        return
    shutil.rmtree(directory, ignore_errors=True)
    model = load_model(str(CHECKPOINT))
    photos = sorted((HERE / "data" / "photos12mp").glob("*.jpg"))[:50]
    real = embed(model, photos)
    synthetic = clustered(n - len(photos), model.dim, seed=1)
    t0 = time.perf_counter()
    with ImageIndex.open_for_write(directory, model.identity, model.source, "auto",
                                   expansion=NONE) as idx:  # raw search is what is measured
        rows = [NewImage(str(p.parent), p.name, None, 0, 0, "", 4000, 3000, v) for p, v in zip(photos, real)]
        idx.commit(add=rows)
        for start in range(0, len(synthetic), 50_000):
            chunk = synthetic[start:start + 50_000]
            idx.commit(add=[NewImage("/synthetic", f"{start + i:07d}.jpg", None, 0, 0, "", 1, 1, v)
                            for i, v in enumerate(chunk)])
        idx.save()
        spec = idx.manifest["faiss"]
    print(f"built {n:,}-vector index ({spec['factory']}, {spec['params']}) in {time.perf_counter() - t0:.0f} s")
    marker.write_text(str(n))


def cold(args: list[str], repeats: int = 3) -> float:
    exe = str(Path(sys.executable).parent / "imgembed")
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([exe, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    args = parser.parse_args()
    if not CHECKPOINT.is_file():
        raise SystemExit(f"{CHECKPOINT} missing: run bench/fashion_mnist.py --head mlp --hidden 1024 first")
    directory = HERE / "data" / f"index-{args.vectors}"
    build(directory, args.vectors)

    from imgembed.api import Searcher

    photos = sorted((HERE / "data" / "photos12mp").glob("*.jpg"))
    t0 = time.perf_counter()
    searcher = Searcher(directory)
    load = time.perf_counter() - t0
    searcher.search([photos[0]], k=10)  # warm-up
    lat, top_ok = [], 0
    for p in photos[:40]:
        t0 = time.perf_counter()
        result = searcher.search([p], k=10)[0]
        lat.append(time.perf_counter() - t0)
        top_ok += result.hits[0].row.path == p.name
    lat.sort()
    print(f"Searcher over {len(searcher.index):,} vectors ({searcher.index.manifest['faiss']['factory']}): "
          f"load {load:.1f} s; one 12 MP JPEG query end to end: median {statistics.median(lat) * 1e3:.1f} ms, "
          f"p90 {lat[int(0.9 * len(lat))] * 1e3:.1f} ms; {top_ok}/{len(lat)} queries found their own photo first")
    searcher.close()

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(Path(sys.executable).parent / "imgembed"), "index", str(HERE.parent / "sample_images"),
                        "--index", tmp, "-q"], check=True, stdout=subprocess.DEVNULL)
        query = str(HERE.parent / "sample_queries" / "fish_altum_angelfish_01.png")
        print(f"cold start, process start to printed results (median of 3): "
              f"search 1M index {cold(['search', str(photos[0]), '--index', str(directory)]):.2f} s, "
              f"search sample index {cold(['search', query, '--index', tmp]):.2f} s, "
              f"info {cold(['info', '--index', tmp]):.2f} s, --help {cold(['--help']):.2f} s")


if __name__ == "__main__":
    main()
