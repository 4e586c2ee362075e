"""`imgembed serve` under load: concurrent clients against the loopback address, errors and latency.

    .venv/bin/python bench/serve_load.py [--index DIR | --synthetic 100000] [--clients 20] [--seconds 20]

Starts the real `imgembed serve` on 127.0.0.1 twice, with ``--threads 8`` (the default) and with
``--threads 1`` (one request at a time, as the Flask server before it), and runs the same load
against each: ``--clients`` threads, each looping for ``--seconds`` over what a person browsing
does: a grid page, the thumbnails on it, an image's details with its neighbours, and a search by
an uploaded image with a counter-example. Thumbnails are cached on disk; the first pass warms the
cache, so the runs measure the warm path. ``--synthetic N`` serves an index of N images instead:
hard links to the sample drawings in 100 folders, with the sample vectors plus noise (no model
run), to see how pages, image pages and searches scale. Reported per run: requests, errors, requests/s, median
and p95 latency per kind of request; then the ratios of the two runs. Only loopback traffic;
every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(index: Path, threads: int, cache: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # stderr to a file, never a pipe nobody reads: a full pipe would block the server
    log = open(Path(cache).parent / f"serve-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "imgembed", "serve", "--index", str(index), "--port", str(port),
                             "--threads", str(threads), "--thumbnail-cache", str(cache)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "api/info", timeout=2).read()
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(Path(log.name).read_text())
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("imgembed serve did not start within 120 s")


def multipart(fields: list[tuple[str, str, bytes | str]]) -> tuple[bytes, str]:
    """(body, content type) for (name, filename or "", value) fields."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, filename, value in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        head += f'; filename="{filename}"\r\nContent-Type: application/octet-stream' if filename else ""
        parts.append(head.encode() + b"\r\n\r\n" + (value if isinstance(value, bytes) else value.encode()) + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def load(base: str, query: bytes, *, clients: int = 20, seconds: float = 20.0, seed: int = 0) -> dict:
    """Run the load; return ``{"requests", "errors": [..], "per_s", "latency": {kind: [s, ...]}}``."""
    info = json.loads(urllib.request.urlopen(base + "api/info", timeout=30).read())
    total = info["images"]
    latency: dict[str, list[float]] = {"page": [], "thumbnail": [], "image": [], "search": []}
    errors: list[str] = []
    guard = threading.Lock()
    stop = time.monotonic() + seconds

    def timed(kind: str, req) -> bytes | None:
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
        except (urllib.error.URLError, OSError) as e:
            with guard:
                errors.append(f"{kind}: {e}")
            return None
        with guard:
            latency[kind].append(time.perf_counter() - start)
        return body

    def client(n: int) -> None:
        rng = random.Random(seed + n)
        while time.monotonic() < stop:
            offset = rng.randrange(0, max(1, total - 30))
            body = timed("page", f"{base}api/images?offset={offset}&limit=30")
            if body is None:
                continue
            images = json.loads(body)["images"]
            for im in images[:6]:
                timed("thumbnail", f"{base}{im['thumbnail']}{'&' if '?' in im['thumbnail'] else '?'}size=160")
            if images:
                one = rng.choice(images)
                timed("image", f"{base}api/image/{one['index']}/{one['id']}?k=24")
                data, ctype = multipart([("image", "q.png", query), ("negative_id", "", f"{one['index']}:{one['id']}"),
                                         ("k", "", "12")])
                timed("search", urllib.request.Request(base + "api/search", data, {"Content-Type": ctype}))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    count = sum(len(v) for v in latency.values())
    return {"requests": count, "errors": errors, "per_s": count / elapsed, "latency": latency}


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)] if values else float("nan")


def report(name: str, result: dict) -> None:
    print(f"{name}: {result['requests']} requests, {len(result['errors'])} errors, {result['per_s']:.1f} requests/s")
    for kind, values in result["latency"].items():
        if values:
            print(f"  {kind:<10} n={len(values):>5}  median {1000 * statistics.median(values):7.1f} ms  "
                  f"p95 {1000 * p95(values):7.1f} ms")


def sample_index(directory: Path) -> Path:
    index = directory / "index"
    subprocess.run([sys.executable, "-m", "imgembed", "index", str(ROOT / "sample_images"), "--index", str(index), "-q"],
                   check=True, cwd=ROOT)
    return index


def synthetic_index(directory: Path, n: int) -> Path:
    """N hard links to the sample images under 100 folders, indexed with noisy copies of their
    vectors (committed directly: the same rows `imgembed index` writes, without embedding)."""
    import numpy as np

    from imgembed.api import embed, load_model
    from imgembed.index.store import NewImage

    from common import commit_rows, noisy_copies

    model = load_model()
    photos = sorted((ROOT / "sample_images").rglob("*.png"))
    real = embed(model, photos)
    picks, noisy = noisy_copies(real, n, np.random.default_rng(0))
    root, index = directory / "collection", directory / "big-index"
    rows = []
    for i, (j, v) in enumerate(zip(picks, noisy)):
        rel = f"folder{i % 100:02d}/{i:07d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).hardlink_to(photos[j])
        st = (root / rel).stat()
        rows.append(NewImage(str(root), rel, rel.split("/")[0], st.st_size, st.st_mtime_ns, f"h{j}", 256, 256, v))
    commit_rows(index, model.identity, model.source, rows, chunk=10_000)
    return index


def page_latency(base: str, total: int) -> None:
    """One client: a grid page at the start, the middle and the end of the collection."""
    for offset in (0, total // 2, max(0, total - 60)):
        times = []
        for _ in range(20):
            start = time.perf_counter()
            urllib.request.urlopen(f"{base}api/images?offset={offset}&limit=60", timeout=60).read()
            times.append(time.perf_counter() - start)
        print(f"  page at offset {offset:>7}: median {1000 * statistics.median(times):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="index to serve [default: sample_images/ indexed afresh]")
    parser.add_argument("--synthetic", type=int, default=0, help="serve a synthetic index of this many images")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    query = (ROOT / "sample_queries" / "fish_altum_angelfish_01.png").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or (synthetic_index(Path(tmp), args.synthetic) if args.synthetic else sample_index(Path(tmp)))
        results = {}
        for threads in (8, 1):  # the default, then one request at a time
            proc, base = start(index, threads, Path(tmp) / "thumbs")
            try:
                load(base, query, clients=args.clients, seconds=min(5.0, args.seconds))  # warm the caches
                results[threads] = load(base, query, clients=args.clients, seconds=args.seconds)
                if threads == 8:
                    page_latency(base, json.loads(urllib.request.urlopen(base + "api/info").read())["images"])
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            report(f"--threads {threads}, {args.clients} clients, {args.seconds:g} s", results[threads])
        many, one = results[8], results[1]
        print(f"throughput --threads 8 / --threads 1: {many['per_s'] / one['per_s']:.2f}x")
        for kind in many["latency"]:
            if many["latency"][kind] and one["latency"][kind]:
                print(f"  p95 {kind:<10} --threads 1 / --threads 8: {p95(one['latency'][kind]) / p95(many['latency'][kind]):.2f}x")


if __name__ == "__main__":
    main()
