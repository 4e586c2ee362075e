"""Helpers shared by the benchmark scripts (run as `python bench/NAME.py`, so this imports plainly)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path


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
