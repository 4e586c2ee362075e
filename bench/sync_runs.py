"""What the removal guard and tombstones cost a routine `imgembed index` run: this version against
an older commit, side by side on the same 10,000-file folder and the same index.

    .venv/bin/python bench/sync_runs.py [--files 10000] [--baseline c375248] [--repeats 3]

The folder is bench/many_files.py's (64x64 crops of the sample images, 5% broken files). It is
indexed once; then each version, as a whole `imgembed index` process, runs

- **unchanged**: nothing changed since the last run;
- **few changes**: 10 files deleted, 10 rewritten, 10 new, on a fresh copy of the same index,

``--repeats`` times each, alternating the versions. The baseline runs from a `git worktree` of
``--baseline`` with this checkout's virtual environment. Reported: median seconds and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from many_files import make_folder
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run(source: Path, folder: Path, index: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imgembed", "index", str(folder), "--index", str(index), "-q"],
                   check=True, env=env, cwd=source, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def change(folder: Path, round_: int) -> None:
    """10 deleted, 10 rewritten, 10 new files; undone by restore()."""
    files = sorted(folder.rglob("img_*.png"))
    backup = folder.parent / "backup"
    backup.mkdir(exist_ok=True)
    for f in files[:10]:
        shutil.move(f, backup / f.name)
    for i, f in enumerate(files[10:20]):
        shutil.copy(f, backup / f.name)
        Image.open(f).rotate(90 + round_).save(f)
    for i, f in enumerate(files[20:30]):
        Image.open(f).transpose(Image.FLIP_LEFT_RIGHT).save(f.parent / f"new_{i}.png")


def restore(folder: Path) -> None:
    backup = folder.parent / "backup"
    for f in backup.iterdir():
        dest = next(folder.glob(f"*/{f.name}"), None) or folder / f"group{int(f.stem.split('_')[1]) % 20:02d}" / f.name
        shutil.move(f, dest)
    for f in folder.rglob("new_*.png"):
        f.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--baseline", default="c375248")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            folder, _, _ = make_folder(tmp / "many", args.files)
            index = tmp / "idx"
            started = time.perf_counter()
            run(ROOT, folder, index)
            print(f"{args.files} files indexed in {time.perf_counter() - started:.0f} s", flush=True)
            times = {("unchanged", v): [] for v in ("this", "baseline")}
            times.update({("few changes", v): [] for v in ("this", "baseline")})
            for r in range(args.repeats):
                for version, source in (("this", ROOT), ("baseline", baseline)):
                    times[("unchanged", version)].append(run(source, folder, index))
                    copy = tmp / f"idx-{version}"
                    shutil.copytree(index, copy)
                    change(folder, r)
                    times[("few changes", version)].append(run(source, folder, copy))
                    restore(folder)
                    shutil.rmtree(copy)
                    run(ROOT, folder, index)  # untimed: settles the restored files' new mtimes
            print(f"{'run':<12} {'this (s)':>9} {'baseline (s)':>13} {'ratio':>6}")
            for case in ("unchanged", "few changes"):
                this, base = (statistics.median(times[(case, v)]) for v in ("this", "baseline"))
                print(f"{case:<12} {this:>9.2f} {base:>13.2f} {this / base:>6.2f}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
