"""Faults and load: SIGKILL at random moments with resume, and readers running beside a writer."""

import random
import shutil
import signal
import subprocess
import sys
import time

from PIL import Image

from conftest import ROOT, SAMPLES
from imgembed.index import ImageIndex


def make_folder(folder, copies):
    """``copies`` x the 80 sample images, each copy slightly different so no two files match."""
    for c in range(copies):
        for path in sorted(SAMPLES.rglob("*.png")):
            dest = folder / f"{path.parent.name}" / f"c{c}_{path.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            img = Image.open(path).convert("RGB")
            img.putpixel((c, 0), (c * 40 % 256, 7, 99))
            img.save(dest)
    return folder


def start_index(folder, index, *extra):
    return subprocess.Popen([sys.executable, "-m", "imgembed", "index", str(folder), "--index", str(index), "-q",
                             "--batch-size", "8", "--commit-every", "8", "--workers", "1", *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def assert_each_file_once(index, folder):
    with ImageIndex.open(index) as idx:
        rows = idx.store.db.execute("SELECT path FROM images").fetchall()
        paths = [r[0] for r in rows]
        assert len(paths) == len(set(paths))
        if folder is not None:
            expected = {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}
            assert set(paths) == expected
        return idx, len(paths)


def test_sigkill_at_random_moments_then_resume(tmp_path):
    folder = make_folder(tmp_path / "photos", 3)  # 240 images
    index = tmp_path / "idx"
    rng = random.Random(1234)
    counts = []
    for attempt in range(4):
        proc = start_index(folder, index)
        time.sleep(rng.uniform(3.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if (index / "manifest.json").exists():
            with ImageIndex.open(index) as idx:  # opens, consistent, no duplicates
                n = idx.store.count()
                paths = [r[0] for r in idx.store.db.execute("SELECT path FROM images")]
                assert len(paths) == len(set(paths))
                counts.append(n)
    assert counts == sorted(counts)  # committed work is never lost
    final = start_index(folder, index)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()
    idx, n = assert_each_file_once(index, folder)
    assert n == 240
    with ImageIndex.open(index) as idx:
        assert idx.problem is None
        ids, vecs = next(idx.store.iter_vectors(batch=50))
        hits = idx.search(vecs, k=3)
        # copies differ by one pixel, so a copy may tie with the original; its own row is there
        assert all(i in [h.row.id for h in hs] and hs[0].score > 0.999 for i, hs in zip(ids, hits))


READER = r"""
import sys, time, numpy as np
from imgembed.index import ImageIndex
from imgembed.errors import IndexNotFoundError
deadline, n, rng = time.time() + float(sys.argv[2]), 0, np.random.default_rng(0)
while time.time() < deadline:
    try:
        idx = ImageIndex.open(sys.argv[1])
    except IndexNotFoundError:
        time.sleep(0.05)
        continue
    with idx:
        q = rng.standard_normal((4, idx.dim)).astype("float32")
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        for hits in idx.search(q, 5):
            assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
            assert all(h.row.path.endswith(".png") for h in hits)
        n += 1
print(n)
"""


def test_readers_never_fail_while_a_writer_runs(tmp_path):
    folder = make_folder(tmp_path / "photos", 2)
    index = tmp_path / "idx"
    writer = start_index(folder, index)
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(index), "25"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert writer.wait(timeout=300) == 0
    shutil.rmtree(folder / "fish")  # a second writer run that prunes and rebuilds while readers read
    second = start_index(folder, index)
    assert second.wait(timeout=300) == 0
    for r in readers:
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, err
        assert int(out) > 5  # it really searched, many times
    assert_each_file_once(index, folder)
