"""Indexes beyond RAM: build the ``ondisk`` index type at scale and search it memory-mapped.

    nice -n 19 .venv/bin/python bench/ondisk_scale.py [--n 10000000] [--dim 128] [--dir /tmp/ondisk_scale]

Builds the default large-scale configuration that ``vectors.choose("ondisk", n, dim)`` picks,
with the same functions ``imgembed index/rebuild --index-type ondisk`` use (``train_ondisk`` on a
seeded sample, ``save_ondisk`` adding shard by shard and merging into a ``.ivfdata`` file), but
fed by a generator instead of SQLite, so that 10M vectors need no 5 GB database first. The data
is bench/search_scale.py's clustered synthetic distribution (2,000 centres, noise 0.6, calibrated
to real EfficientNet-Lite0 embeddings), generated in shards of 1M so the vectors never all sit in
RAM: one pass for the training sample, one for adding (which also computes the exact top-10 of
1,000 queries by brute force, shard by shard).

The search side runs in a fresh process that opens the index with ``vectors.load`` (memory-mapped,
read-only) and reports: VmRSS/VmHWM after opening and after the queries, Recall@10 for a sweep of
nprobe, single-query latency cold (the .ivfdata evicted from the page cache with
posix_fadvise(DONTNEED) first) and warm (the same queries again). Where the cgroup v1 memory
controller is writable (root), the same process runs again under a hard memory limit smaller
than the index (``--limit-mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from imgembed.index import vectors

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CENTRES, NOISE = 2000, 0.6  # as bench/search_scale.py's clustered()


def centres(dim: int, seed: int) -> np.ndarray:
    c = np.random.default_rng(seed).standard_normal((CENTRES, dim)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def clustered_shard(c: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    dim = c.shape[1]
    x = c[rng.integers(0, len(c), m)] + NOISE * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def shards(n: int, dim: int, seed: int, shard: int):
    """``(ids, vectors)`` of ``n`` clustered vectors, ``shard`` at a time, the same on every call."""
    c = centres(dim, seed)
    for no, start in enumerate(range(0, n, shard)):
        m = min(shard, n - start)
        yield np.arange(start, start + m, dtype=np.int64), clustered_shard(c, m, np.random.default_rng([seed, no]))


class TopK:
    """Exact top-k by inner product of ``queries`` over vectors seen chunk by chunk."""

    def __init__(self, queries: np.ndarray, k: int = 10):
        self.q, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)

    def update(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        for start in range(0, len(ids), 100_000):
            s = self.q @ vecs[start:start + 100_000].T
            part = np.argpartition(-s, self.k, axis=1)[:, :self.k]
            scores = np.concatenate([self.scores, np.take_along_axis(s, part, 1)], axis=1)
            cand = np.concatenate([self.ids, ids[start:start + 100_000][part]], axis=1)
            best = np.argsort(-scores, axis=1)[:, :self.k]
            self.scores, self.ids = np.take_along_axis(scores, best, 1), np.take_along_axis(cand, best, 1)


def memory_status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def search_child(directory: Path, nprobes: list[int], single: int, params: str | None = None,
                 count: int | None = None) -> dict:
    """Runs in its own process: open memory-mapped, measure, print JSON."""
    spec = json.loads((directory / "spec.json").read_text())
    spec["params"] = params or spec["params"]
    queries, truth = np.load(directory / "queries.npy")[:count], np.load(directory / "truth.npy")[:count]
    index_path = directory / "vectors.faiss"
    for f in directory.glob("*.ivfdata"):
        evict(f)
    t0 = time.perf_counter()
    index = vectors.load(index_path, spec["params"])
    out = {"open_s": time.perf_counter() - t0, "after_open": memory_status(), "params": spec["params"]}
    faiss.omp_set_num_threads(1)

    def single_latencies() -> list[float]:
        lat = []
        for q in queries[:single]:
            t = time.perf_counter()
            index.search(q[None], 10)
            lat.append(time.perf_counter() - t)
        return lat

    cold, warm = single_latencies(), single_latencies()
    out["single_cold_ms"] = {"median": float(np.median(cold) * 1e3), "p90": float(np.percentile(cold, 90) * 1e3)}
    out["single_warm_ms"] = {"median": float(np.median(warm) * 1e3), "p90": float(np.percentile(warm, 90) * 1e3)}
    out["after_single"] = memory_status()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    sweep = []
    ivf = faiss.extract_index_ivf(index)
    for nprobe in nprobes:
        if nprobe > ivf.nlist:
            continue
        params = f"nprobe={nprobe}" + (f",quantizer_efSearch={2 * nprobe}" if "HNSW" in spec["factory"] else "")
        vectors.apply_params(index, params)
        t = time.perf_counter()
        _, ids = index.search(queries, 10)
        took = time.perf_counter() - t
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]))
        sweep.append({"nprobe": nprobe, "recall@10": recall, "batch_qps": len(queries) / took})
    out["sweep"] = sweep
    out["after_sweep"] = memory_status()
    return out


def run_child(directory: Path, nprobes: list[int], single: int, cgroup: Path | None = None,
              timeout: float | None = None, params: str | None = None, count: int = 1000) -> dict:
    cmd = [sys.executable, __file__, "--child", str(directory), "--single", str(single), "--queries", str(count),
           "--nprobes", *map(str, nprobes), *(["--params", params] if params else [])]
    if cgroup is not None:
        cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"no answer within {timeout} s"}
    if done.returncode:
        return {"failed": done.returncode, "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout)


def limited_run(directory: Path, limit: int, nprobes: list[int], single: int, params: str | None = None) -> dict:
    if not os.access(CGROUP_V1, os.W_OK):
        return {"skipped": f"{CGROUP_V1} is not writable"}
    group = CGROUP_V1 / f"imgembed_ondisk_bench_{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        out = run_child(directory, nprobes, single, group, timeout=1200, params=params, count=200)
        out["cgroup_limit"] = limit
        out["cgroup_max_usage"] = int((group / "memory.max_usage_in_bytes").read_text())
        out["cgroup_failcnt"] = int((group / "memory.failcnt").read_text())
        return out
    finally:
        group.rmdir()


def build(directory: Path, n: int, dim: int, seed: int, shard: int, queries: np.ndarray, code: str | None) -> dict:
    spec = vectors.choose("ondisk", n, dim)
    if code:  # another codec for the lists, e.g. SQfp16
        spec = vectors.IndexSpec(spec.index_type, spec.factory.rsplit(",", 1)[0] + "," + code, spec.params, n)
    directory.mkdir(parents=True, exist_ok=True)
    for f in [*directory.glob("*.ivfdata"), directory / "vectors.faiss"]:
        f.unlink(missing_ok=True)
    times = {}
    t0 = time.perf_counter()
    trained = vectors.train_ondisk(dim, spec.factory, lambda: shards(n, dim, seed, shard), n, params=spec.params)
    times["train_s"] = time.perf_counter() - t0
    truth = TopK(queries)
    gen_s, fed = 0.0, 0.0

    def feed():
        nonlocal gen_s, fed
        it = shards(n, dim, seed, shard)
        while True:
            t = time.perf_counter()
            try:
                ids, vecs = next(it)
            except StopIteration:
                fed = time.perf_counter()  # every shard added: what follows is the merge
                return
            truth.update(ids, vecs)
            gen_s += time.perf_counter() - t
            yield ids, vecs

    t0 = time.perf_counter()
    vectors.save_ondisk(trained, directory / "vectors.faiss", feed())
    times["add_s"] = fed - t0 - gen_s
    times["merge_and_publish_s"] = time.perf_counter() - fed
    times["generate_and_ground_truth_s"] = gen_s
    np.save(directory / "queries.npy", queries)
    np.save(directory / "truth.npy", truth.ids)
    (directory / "spec.json").write_text(json.dumps(spec.to_dict()))
    return {"spec": spec.to_dict(), **times}


def rescored_recall(directory: Path, n: int, dim: int, seed: int, shard: int, params: str, candidates: int) -> dict:
    """Recall@10 when the best ``candidates`` by the codes are re-scored with the exact vectors,
    as ``ImageIndex.search`` does with the vectors stored in SQLite (here: regenerated)."""
    queries, truth = np.load(directory / "queries.npy"), np.load(directory / "truth.npy")
    index = vectors.load(directory / "vectors.faiss", params)
    _, cand = index.search(queries, candidates)
    _, raw = index.search(queries, 10)
    wanted = np.unique(cand[cand >= 0])
    found: dict[int, np.ndarray] = {}
    for ids, vecs in shards(n, dim, seed, shard):
        hit = np.isin(ids, wanted)
        found.update(zip(ids[hit].tolist(), vecs[hit]))
    scores = np.einsum("qmd,qd->qm", np.stack([[found[int(i)] for i in row] for row in cand]), queries)
    best = np.take_along_axis(cand, np.argsort(-scores, axis=1)[:, :10], 1)

    def recall(ids):
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]))

    return {"params": params, "candidates": candidates, "recall@10_codes": recall(raw), "recall@10_rescored": recall(best)}


def rescore_cost(directory: Path, n: int, dim: int, candidates: int = 40, queries: int = 500) -> dict:
    """Milliseconds per query that re-scoring costs: fetching ``candidates`` random vectors by id
    from a MetadataStore of ``n`` rows (built here, page cache warm) and scoring them."""
    from imgembed.index.store import MetadataStore, NewImage

    rng = np.random.default_rng(0)
    path = directory / "rescore.sqlite"
    path.unlink(missing_ok=True)
    with MetadataStore(path, create=True) as store:
        for lo in range(0, n, 10_000):
            vecs = clustered_shard(centres(dim, 1), 10_000, rng)
            store.commit(add=[NewImage("/d", f"{lo + i}.jpg", None, 1, 1, "", 1, 1, v) for i, v in enumerate(vecs)])
        q = clustered_shard(centres(dim, 1), queries, rng)
        t = time.perf_counter()
        for one in q:
            ids = rng.integers(1, n + 1, candidates)
            got = store.vectors_by_id(ids)
            np.stack([got[int(i)] for i in ids]) @ one
        took = (time.perf_counter() - t) / queries
    size = path.stat().st_size
    path.unlink()
    return {"rows": n, "candidates": candidates, "ms_per_query": took * 1e3, "sqlite_bytes_per_row": size / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ondisk_scale"))
    parser.add_argument("--shard", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--limit-mb", type=int, default=512, help="cgroup memory limit for the limited search run")
    parser.add_argument("--code", help="codec of the lists instead of the default's SQ8, e.g. SQfp16")
    parser.add_argument("--params", help="search parameters instead of those the index was built with")
    parser.add_argument("--skip-build", action="store_true", help="search the index already in --dir")
    parser.add_argument("--limited-only", action="store_true", help="with --skip-build: only the cgroup-limited run")
    parser.add_argument("--rescore-only", action="store_true",
                        help="with --skip-build: only Recall@10 with and without exact re-scoring")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(search_child(args.child, args.nprobes, args.single, args.params, args.queries)))
        return
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, n={args.n:,} x {args.dim}", flush=True)
    if not args.skip_build:
        queries = clustered_shard(centres(args.dim, 0), args.queries, np.random.default_rng([0, 10**9]))
        t0 = time.perf_counter()
        built = build(args.dir, args.n, args.dim, 0, args.shard, queries, args.code)
        built["total_s"] = time.perf_counter() - t0
        print("build", json.dumps(built), flush=True)
    data = next(args.dir.glob("*.ivfdata"))
    faiss_bytes, data_bytes = (args.dir / "vectors.faiss").stat().st_size, data.stat().st_size
    print(f"files: vectors.faiss {faiss_bytes:,} B + {data.name} {data_bytes:,} B = "
          f"{(faiss_bytes + data_bytes) / args.n:.1f} B/vector on disk", flush=True)
    default_params = args.params or vectors.choose("ondisk", args.n, args.dim).params
    print("rescored", json.dumps(rescored_recall(args.dir, args.n, args.dim, 0, args.shard, default_params, 40)),
          flush=True)
    print("rescore cost", json.dumps(rescore_cost(args.dir, 1_000_000, args.dim)), flush=True)
    if args.rescore_only:
        return
    if not args.limited_only:
        print("search", json.dumps(run_child(args.dir, args.nprobes, args.single, params=args.params)), flush=True)
    # Under the limit most probes read from disk: measure the default nprobe only, on fewer queries.
    params = args.params or json.loads((args.dir / "spec.json").read_text())["params"]
    nprobe = int(params.split("nprobe=")[1].split(",")[0])
    limited = limited_run(args.dir, args.limit_mb << 20, [nprobe], min(args.single, 100), args.params)
    print(f"search under a {args.limit_mb} MiB cgroup limit (index {(faiss_bytes + data_bytes) >> 20} MiB)",
          json.dumps(limited), flush=True)


if __name__ == "__main__":
    main()
