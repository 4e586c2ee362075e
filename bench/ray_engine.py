"""The local engine against the Ray engine on one folder, in one run: throughput and parity.

    .venv/bin/python bench/ray_engine.py [--images 3000] [--actors 1 2]

The folder is the first N PNGs of Debian's openclipart-png (public domain; installed with
apt-get when missing), copied into sub-folders by category, plus 1% broken files (truncated
copies; a few of the drawings also exceed --max-pixels), so both engines must also skip and name
the same files. Steps, on the same model
(EfficientNet-Lite0, precision auto) and the same files:

1. local: `api.index_folder(..., engine="local")` into a fresh index;
2. Ray: a local Ray cluster with 2 CPUs (`ray.init(num_cpus=2)`, timed on its own), then
   `api.index_folder(..., engine="ray", ray_actors=A)` into a fresh index for each A asked for.

Both engines are timed around the whole `index_folder` call (plan, embedding, SQLite commits,
FAISS save). The overhead is `1 - ray_rate / local_rate`, reported with and without the cluster's
start-up. Parity: cosine between the two vectors of every file, and the skipped lists. Last, the
driver's own ceiling: how many embedded images per second one `index` process can commit,
which bounds any cluster feeding one index.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_debian_package  # noqa: E402

CLIPART = Path("/usr/share/openclipart/png")


def make_folder(folder: Path, n: int) -> tuple[int, int]:
    sources = sorted(CLIPART.rglob("*.png"))[:n]
    bad = 0
    for i, src in enumerate(sources):
        rel = src.relative_to(CLIPART)
        dest = folder / rel.parts[0] / f"{i:05d}_{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if i % 100 == 99:  # a truncated copy: both engines must skip it with the same reason
            dest.write_bytes(src.read_bytes()[: max(64, src.stat().st_size // 3)])
            bad += 1
        else:
            shutil.copyfile(src, dest)
    return len(sources) - bad, bad


def vectors_by_path(index_dir: Path) -> tuple[dict, list]:
    from imgembed.index import ImageIndex

    with ImageIndex.open(index_dir) as idx:
        out = {}
        for ids, vecs in idx.store.iter_vectors():
            rows = idx.store.rows_by_id(ids)
            out.update({rows[int(i)].path: v for i, v in zip(ids, vecs)})
        return out, sorted((s.path, s.reason) for s in idx.store.skipped())


def driver_ceiling(directory: Path, dim: int, n: int = 20_000, chunk: int = 256) -> float:
    """Rows per second the driver alone can commit (SQLite + FAISS), whatever the cluster's size:
    the ceiling of one index's ingest. Synthetic unit vectors, chunks as `index` commits them."""
    from imgembed.index import ImageIndex
    from imgembed.index.store import NewImage

    rng = np.random.default_rng(0)
    identity = {"backbone": "synthetic", "dim": dim}
    start = time.perf_counter()
    with ImageIndex.open_for_write(directory, identity, {}) as idx:
        for lo in range(0, n, chunk):
            vecs = rng.standard_normal((min(chunk, n - lo), dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            idx.commit(add=[NewImage("/data", f"d{(lo + i) // 1000}/img{lo + i}.jpg", f"d{(lo + i) // 1000}",
                                     100_000, 1, f"{lo + i:032x}", 640, 480, v) for i, v in enumerate(vecs)])
        idx.save()
    return n / (time.perf_counter() - start)


def driver_memory_per_file(directory: Path, n: int = 20_000) -> tuple[float, float]:
    """Bytes of Python memory per file to embed that the driver holds: its plan, and the Ray
    engine's input rows (tracemalloc, over ``n`` new files with 30-character names)."""
    import tracemalloc

    from imgembed.index import planner
    from imgembed.index.store import MetadataStore

    root = directory / "names"
    for i in range(n):
        path = root / f"group{i % 20:02d}" / f"some_longish_photo_name_{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    with MetadataStore(directory / "plan.sqlite", create=True) as store:
        tracemalloc.start()
        plan = planner.plan(str(root), planner.scan(root), store.rows_under(str(root)), {})
        planned = tracemalloc.get_traced_memory()[0]
        items = [{"pos": i, "path": os.fsencode(f.path)} for i, f in enumerate(plan.todo)]
        rows = tracemalloc.get_traced_memory()[0] - planned
        tracemalloc.stop()
    assert len(items) == n
    return planned / n, rows / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    ensure_debian_package("openclipart-png", CLIPART)

    import ray

    from imgembed.api import index_folder, load_model

    model = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        good, bad = make_folder(tmp / "photos", args.images)
        for p in (tmp / "photos").rglob("*"):  # same page-cache state for every engine
            p.is_file() and p.read_bytes()
        print(f"folder: {good} decodable openclipart PNGs + {bad} truncated, model {model.backbone_name}, "
              f"precision {model.precision}")

        def run(name: str, **kw) -> tuple[float, object]:
            start = time.perf_counter()
            report = index_folder(tmp / "photos", tmp / name, model, **kw)
            return time.perf_counter() - start, report

        local_s, local = run("local")
        good = local.added  # some clip art exceeds --max-pixels: skipped by both engines
        local_rate = good / local_s
        print(f"local engine:             {local_rate:6.1f} images/s ({local_s:.1f} s); "
              f"{good} added, {len(local.skipped)} skipped")

        # The local engine's processes run at nice 0; Ray starts its workers at nice 15. Give
        # them the same priority, so that other load on the machine weighs on both alike.
        os.environ.setdefault("RAY_worker_niceness", "0")
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - start
        print(f"Ray local cluster start:  {startup:.1f} s (2 CPUs)")
        reference, skipped_ref = vectors_by_path(tmp / "local")
        try:
            for actors in args.actors:
                ray_s, report = run(f"ray{actors}", engine="ray", ray_actors=actors)
                assert report.added == good and report.skipped == local.skipped, report.to_dict()
                rate = good / ray_s
                vecs, skipped = vectors_by_path(tmp / f"ray{actors}")
                assert vecs.keys() == reference.keys()
                cos = np.array([float(reference[p] @ vecs[p]) for p in reference])
                print(f"Ray engine, {actors} actor(s):   {rate:6.1f} images/s ({ray_s:.1f} s); "
                      f"{rate / local_rate:.2f}x local, overhead {1 - rate / local_rate:+.1%}; "
                      f"with cluster start {1 - good / (ray_s + startup) / local_rate:+.1%}")
                print(f"  parity: cosine to local min {cos.min():.5f}, median {np.median(cos):.5f}; "
                      f"skipped lists {'identical' if skipped == skipped_ref else 'DIFFER'}")
        finally:
            ray.shutdown()
        plan, rows = driver_memory_per_file(tmp)
        print(f"driver memory per file to embed: plan {plan:.0f} B, Ray input rows {rows:.0f} B")
        for dim in (model.dim, 128):
            rate = driver_ceiling(tmp / f"ingest{dim}", dim)
            print(f"driver ingest ceiling, {dim}-d vectors: {rate:,.0f} images/s (SQLite commit + FAISS add, no model)")


if __name__ == "__main__":
    main()
