"""Helpers shared by the benchmark scripts (run as `python bench/NAME.py`, so this imports plainly)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def images_per_second(fn, batch, repeats: int = 3, warmup: int = 1) -> float:
    """Throughput of ``fn(batch)`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    return len(batch) * repeats / (time.perf_counter() - start)


def ensure_debian_package(package: str, marker: Path) -> None:
    """Install Debian ``package`` with apt-get unless ``marker`` (a file or folder it ships) exists."""
    if marker.exists():
        return
    print(f"installing Debian's {package} ...", file=sys.stderr)
    if shutil.which("apt-get") is None:
        sys.exit(f"apt-get not found: install {package} (it provides {marker})")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)


# A child's peak RSS starts from its parent's at fork: a launcher this small, started afresh,
# reports its own child's peak without the (torch-sized) benchmark process in it.
# It times the child itself, so that its own start-up is not counted.
_LAUNCH = ("import resource, subprocess, sys, time\n"
           "start = time.perf_counter()\n"
           "code = subprocess.run(sys.argv[1:], stdout=sys.stdout).returncode\n"
           "wall = time.perf_counter() - start\n"
           "print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(code)")


def run_measured(args: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, float, str]:
    """Run a command as a new process: (wall seconds, peak RSS in MB, stdout). Exits on failure."""
    proc = subprocess.run([sys.executable, "-c", _LAUNCH, *args], capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    wall, peak = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(peak) / 1024, proc.stdout


# -- synthetic unit vectors ------------------------------------------------------------------------

def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def uniform(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the sphere: no structure, the hardest case for an inverted file."""
    return unit(rng.standard_normal((n, dim)))


def clusters(n: int, dim: int, rng: np.random.Generator, noise: float | tuple[float, float], zipf: float | None = None,
             centres: int = 2000, *, background: float = 0.0, chunk: int | None = None) -> np.ndarray:
    """``n`` unit vectors around ``centres`` random unit centres, with Gaussian noise of norm
    ``noise`` (about; ``(lo, hi)``: each cluster its own, drawn uniformly), cluster sizes equal or
    power-law (``zipf``), and a ``background`` share of the points uniform on the sphere instead.

    Drawn ``chunk`` points at a time (None: all at once), so that 10M points never need more than
    the output in RAM. With ``chunk=None``, a single ``noise`` and no background this draws exactly
    what bench/recall_check.py always drew, so numbers quoted from it stay reproducible."""
    c = unit(rng.standard_normal((centres, dim)))
    spread = rng.uniform(noise[0], noise[1], centres).astype(np.float32) if isinstance(noise, tuple) else None
    weights = None
    if zipf:
        weights = 1.0 / np.arange(1, centres + 1) ** zipf
        weights /= weights.sum()
    out = np.empty((n, dim), np.float32)
    step = chunk or max(n, 1)
    for start in range(0, n, step):
        m = min(step, n - start)
        picks = rng.choice(centres, m, p=weights)
        scale = (noise if spread is None else spread[picks][:, None]) / np.sqrt(dim)
        x = unit(c[picks] + scale * rng.standard_normal((m, dim)))
        if background:
            flat = rng.random(m) < background
            x[flat] = uniform(int(flat.sum()), dim, rng)
        out[start:start + m] = x
    return out


# -- synthetic indexes -----------------------------------------------------------------------------

def noisy_copies(real: np.ndarray, n: int, rng: np.random.Generator, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """``(picks, vectors)``: ``n`` unit vectors, each a real one (``real[picks[i]]``) moved by
    Gaussian noise of norm about ``spread``: a large collection that looks like the real one."""
    picks = rng.integers(0, len(real), n)
    dim = real.shape[1]
    return picks, unit(real[picks] + rng.normal(0, spread / np.sqrt(dim), (n, dim)).astype(np.float32))


def commit_rows(directory: Path, identity: dict, source: dict, rows: list, index_type: str = "auto",
                chunk: int = 50_000) -> dict:
    """Write ``rows`` (:class:`imgembed.index.store.NewImage`) straight into the index at
    ``directory``, ``chunk`` rows a commit: the rows `imgembed index` writes, without embedding.
    Returns the manifest's FAISS entry."""
    from imgembed.index import ImageIndex

    with ImageIndex.open_for_write(directory, identity, source, index_type) as idx:
        for start in range(0, len(rows), chunk):
            idx.commit(add=rows[start:start + chunk])
        idx.save()
        return dict(idx.manifest["faiss"])

