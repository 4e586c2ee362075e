"""Cold queries: `imgembed search|classify|compare` as whole processes, against the previous version.

    .venv/bin/python bench/cold_query.py [--images 10000] [--repeats 7] [--baseline ecfbb8e]

Builds once, in bench/data/cold-query-<N>/, an index of N images under the default model: the
80 sample images embedded for real, plus N - 80 rows whose vectors are those embeddings with
noise added (the index file, SQLite and the search cost are those of an N-image collection).
Then runs each command as a new process `--repeats` times in three ways, interleaved so that all
see the same machine: this version with its default runtime (ONNX Runtime), this version with
`--runtime torch`, and the `--baseline` commit (the version before ONNX Runtime, from a `git
worktree` run with this checkout's virtual environment). Reported: the median wall time
(process start to exit, output printed), the peak memory (max RSS), and the ratios. The queries are a
sample PNG and a 12 MP JPEG (a scikit-image photo upscaled to 4032x3024).
The ONNX export is made before timing (as `imgembed index` does), so the ONNX runs are what a
user sees after indexing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from common import commit_rows, noisy_copies, run_measured  # noqa: E402


def build(directory: Path, n: int) -> None:
    from imgembed.api import embed, load_model
    from imgembed.index.store import NewImage

    phone_photo(HERE / "data" / "phone-4032x3024.jpg")
    load_model()  # the ONNX export, cached as `imgembed index` leaves it
    marker = directory / ".complete"
    if marker.is_file() and marker.read_text() == str(n):
        return
    import shutil

    import numpy as np

    shutil.rmtree(directory, ignore_errors=True)
    model = load_model(runtime="torch", precision="fp32")
    photos = sorted((REPO / "sample_images").rglob("*.png"))
    real = embed(model, photos)
    picks, noisy = noisy_copies(real, n - len(real), np.random.default_rng(0))
    rows = [NewImage(str(p.parent.parent), f"{p.parent.name}/{p.name}", p.parent.name, 0, 0, "", 1, 1, v)
            for p, v in zip(photos, real)]
    rows += [NewImage("/synthetic", f"{photos[j].parent.name}/{i:06d}.jpg", photos[j].parent.name, 0, 0, "", 1, 1, v)
             for i, (j, v) in enumerate(zip(picks, noisy))]
    commit_rows(directory, model.identity, model.source, rows, chunk=len(rows))
    marker.write_text(str(n))


def phone_photo(path: Path) -> Path:
    if not path.is_file():  # in the build subprocess: scikit-image imports half of scipy
        from PIL import Image
        from skimage import data

        Image.fromarray(data.chelsea()).resize((4032, 3024), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


# As on a user's machine: Python caches compiled modules (this sandbox turns that off).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(source: Path, args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS in MB of one `python -m imgembed` process, imgembed from ``source``."""
    wall, peak, _ = run_measured([sys.executable, "-m", "imgembed", *args], env={**ENV, "PYTHONPATH": str(source)},
                                 cwd=source)  # `-m` puts the working folder first on the path
    return wall, peak


def measure(commands: dict, ways: dict, repeats: int) -> list[dict]:
    for cmd in commands.values():  # warm the page cache and the optimised-graph cache
        for source, extra in ways.values():
            run(source, [*cmd, *extra])
    rows = []
    for name, cmd in commands.items():
        got = {way: [] for way in ways}
        for _ in range(repeats):
            for way, (source, extra) in ways.items():
                got[way].append(run(source, [*cmd, *extra]))
        row = {"command": name, "repeats": repeats}
        for way, runs in got.items():
            row[f"{way}_s"] = statistics.median(w for w, _ in runs)
            row[f"{way}_mb"] = max(m for _, m in runs)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", default="ecfbb8e", help="Commit to compare with [default: before ONNX Runtime].")
    parser.add_argument("--report", type=Path, help="Also write the results as JSON here.")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    directory = HERE / "data" / f"cold-query-{args.images}"
    directory.parent.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        build(directory, args.images)
        return
    subprocess.run([sys.executable, __file__, "--images", str(args.images), "--build-only"], check=True)  # torch stays there
    png = str(REPO / "sample_queries" / "fish_altum_angelfish_01.png")
    jpg = str(HERE / "data" / "phone-4032x3024.jpg")
    pear = [str(REPO / "sample_images" / "fruit" / "pear.png"), str(REPO / "sample_images" / "fruit" / "pear_simple.png")]
    commands = {
        "search PNG": ["search", png, "--index", str(directory)],
        "search 12 MP JPEG": ["search", jpg, "--index", str(directory)],
        "classify PNG": ["classify", png, "--index", str(directory)],
        "compare two PNGs": ["compare", *pear],
    }
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=REPO, check=True,
                       capture_output=True)
        try:
            ways = {"onnx": (REPO, []), "torch": (REPO, ["--runtime", "torch"]), "baseline": (baseline, [])}
            rows = measure(commands, ways, args.repeats)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, capture_output=True)
    print(f"{'command':<20} {'onnx s':>7} {'torch s':>8} {'baseline s':>11} {'base/onnx':>10} "
          f"{'onnx MB':>8} {'torch MB':>9} {'base MB':>8}")
    for row in rows:
        print(f"{row['command']:<20} {row['onnx_s']:>7.2f} {row['torch_s']:>8.2f} {row['baseline_s']:>11.2f} "
              f"{row['baseline_s'] / row['onnx_s']:>9.1f}x {row['onnx_mb']:>8.0f} {row['torch_mb']:>9.0f} "
              f"{row['baseline_mb']:>8.0f}")
    start = statistics.median(run_measured([sys.executable, "-c", "pass"], env=ENV)[0] for _ in range(args.repeats))
    print(f"(median of {args.repeats} whole processes each, index of {args.images:,} images, {os.cpu_count()} cores; "
          f"a bare `python -c pass` takes {start:.2f} s here)")
    if args.report:
        args.report.write_text(json.dumps({"rows": rows, "python_start_s": start}, indent=1))


if __name__ == "__main__":
    main()
