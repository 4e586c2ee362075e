"""A generated folder of many small files, about 5% of them broken, indexed twice.

    .venv/bin/python bench/many_files.py [--files 10000]

The folder (seeded) holds 64x64 crops of the sample images in 20 sub-folders, and, with
probability 0.05 per file, a broken one instead: empty, truncated JPEG, text with an image
extension, or a PNG header claiming 10^10 pixels. The first run must add every good file once
and name every bad one; the second must find all unchanged, at about the cost of a directory walk.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def _huge_png() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def make_folder(folder: Path, n: int, seed: int = 0) -> tuple[Path, set[str], set[str]]:
    """Returns (folder, names of good files, names of bad files); names are unique."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.rglob("*.png"))]
    good, bad = set(), set()
    for i in range(n):
        sub = folder / f"group{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        if rng.random() < 0.05:
            kind = rng.choice(["empty", "truncated", "text", "huge"])
            name = f"bad_{i:05d}_{kind}." + ("png" if kind == "huge" else "jpg")
            data = {"empty": b"", "text": b"not an image\n", "huge": _huge_png()}.get(kind)
            if kind == "truncated":
                path = sub / name
                sources[i % len(sources)].save(path, "JPEG", quality=85)
                data = path.read_bytes()[:200]
            (sub / name).write_bytes(data)
            bad.add(name)
        else:
            src = sources[i % len(sources)]
            x, y = rng.randint(0, max(0, src.width - 64)), rng.randint(0, max(0, src.height - 64))
            name = f"img_{i:05d}.png"
            src.crop((x, y, x + 64, y + 64)).save(sub / name)
            good.add(name)
    return folder, good, bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    from imgembed.api import IndexOptions, index_folder, load_model
    from imgembed.index import ImageIndex

    with tempfile.TemporaryDirectory() as tmp:
        folder, good, bad = make_folder(Path(tmp) / "many", args.files)
        model = load_model()
        t0 = time.perf_counter()
        first = index_folder(folder, Path(tmp) / "idx", model, options=IndexOptions(batch_size=64))
        t1 = time.perf_counter()
        second = index_folder(folder, Path(tmp) / "idx", model)
        t2 = time.perf_counter()
        with ImageIndex.open(Path(tmp) / "idx") as idx:
            paths = [r[0] for r in idx.store.db.execute("SELECT path FROM images")]
        named = {Path(p).name for p, _ in first.skipped}
        ok = (len(paths) == len(set(paths)) == len(good) and {Path(p).name for p in paths} == good and named == bad
              and second.unchanged == len(good) and second.added == second.updated == 0)
        print(f"{args.files} files, {len(bad)} bad: first run added {first.added}, skipped {len(first.skipped)} "
              f"in {t1 - t0:.1f} s ({first.added / (t1 - t0):.0f} images/s); second run unchanged "
              f"{second.unchanged}, skipped {len(second.skipped)} in {t2 - t1:.2f} s; "
              f"{'every good file once, every bad one named' if ok else 'MISMATCH'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
