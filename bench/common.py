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
