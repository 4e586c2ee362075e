"""Faults and load: SIGKILL at random moments with resume and no process left behind, and
readers running beside a writer."""

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from imgembed.index import ImageIndex
from imgembed.index.lock import LOCK_FILE, read_holder

from conftest import ROOT, SAMPLES

HAS_PROC = Path("/proc/self/stat").exists()
needs_proc = pytest.mark.skipif(not HAS_PROC, reason="reads processes from /proc (Linux)")


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


def start_index(folder, index, *extra, workers=1, env=None):
    return subprocess.Popen([sys.executable, "-m", "imgembed", "index", str(folder), "--index", str(index), "-q",
                             "--batch-size", "8", "--commit-every", "8", "--workers", str(workers), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def committed(index_dir) -> int:
    """Images committed so far by a running `index`, read the way a reader would."""
    try:
        with sqlite3.connect(f"file:{Path(index_dir) / 'metadata.sqlite'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def _stat(pid):
    """``(ppid, state)`` of a process, from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0].decode()


def alive(pid) -> bool:
    """Running (a zombie is dead: only its exit status is left for a parent to collect)."""
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"


def descendants(pid) -> set[int]:
    """The living processes below ``pid``: children, their children, and so on."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) and stat[1] != "Z":
            children.setdefault(stat[0], []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def mentioning(text) -> set[int]:
    """Living processes whose command line contains ``text`` (a forked worker keeps its parent's)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes() and alive(entry.name):
                found.add(int(entry.name))
        except OSError:
            pass
    return found


def describe(pids) -> str:
    lines = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        lines.append(f"{pid}: {cmd[:160]}")
    return "\n".join(lines)


def left_after_kill(proc, pids, seconds=15.0, also=set) -> set[int]:
    """SIGKILL ``proc``, then wait up to ``seconds`` for ``pids``, and those ``also()`` finds, to
    die; those still alive."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + seconds
    while (left := {p for p in pids if alive(p)} | also()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def assert_none_left(left):
    found = describe(left)
    for pid in left:  # not to leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of a SIGKILLed run still alive:\n{found}"


def wait_for(condition, proc, seconds=300.0, what="the run to get that far"):
    """Poll ``condition()`` until it returns something true; fail if ``proc`` ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := condition():
            return found
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def assert_each_file_once(index, folder):
    with ImageIndex.open(index) as idx:
        rows = idx.store.db.execute("SELECT path FROM images").fetchall()
        paths = [r[0] for r in rows]
        assert len(paths) == len(set(paths))
        if folder is not None:
            expected = {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}
            assert set(paths) == expected
        return idx, len(paths)


def holds_the_lock(index, proc) -> bool:
    """Whether ``proc`` has taken the index's writer lock (the lock file names its holder)."""
    return (read_holder(Path(index) / LOCK_FILE) or {}).get("pid") == proc.pid


def test_sigkill_at_random_moments_then_resume(tmp_path):
    """Four runs SIGKILLed at seeded moments, each resumed by the next. A kill comes once the run
    holds the writer lock and has committed ``past`` images more than the runs before it kept
    (``past`` 0 for one of them: before its first chunk, while it plans and loads the model),
    then a seeded fraction of a second later, so that it lands anywhere in what follows:
    decoding, embedding, a commit, a publication."""
    folder = make_folder(tmp_path / "photos", 3)  # 240 images
    index = tmp_path / "idx"
    rng = random.Random(1234)
    pasts = [0] + [rng.randint(1, 30) for _ in range(3)]  # 90 of the 240 at most: no run gets to the end
    rng.shuffle(pasts)
    counts = []
    for past in pasts:
        target = committed(index) + past
        proc = start_index(folder, index)
        wait_for(lambda: holds_the_lock(index, proc) and committed(index) >= target, proc,
                 what=f"the writer lock and {target} committed images")
        time.sleep(rng.uniform(0.0, 0.25))
        below = (descendants(proc.pid) | mentioning(str(index))) - {proc.pid} if HAS_PROC else set()
        assert_none_left(left_after_kill(proc, below, also=lambda: mentioning(str(index)) if HAS_PROC else set()))
        assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
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


@needs_proc
def test_a_sigkilled_index_leaves_no_process_behind(tmp_path):
    """A real `index` with two decode workers, SIGKILLed once it has committed work (its
    workers busy decoding): within a bounded wait no process of that run is left, neither one
    seen below it nor any other carrying its command line."""
    folder = make_folder(tmp_path / "photos", 3)  # 240 images
    index = tmp_path / "idx"
    proc = start_index(folder, index, workers=2)
    wait_for(lambda: len(mentioning(str(index)) - {proc.pid}) >= 2 and committed(index) >= 8, proc,
             what="two decode workers and a first committed chunk")
    below = (descendants(proc.pid) | mentioning(str(index))) - {proc.pid}
    assert_none_left(left_after_kill(proc, below, also=lambda: mentioning(str(index))))


# A pool made and first used by a thread that then exits: its workers must live on (the kernel's
# parent-death signal follows the forking thread, not the process) and still die with the process.
POOL_FROM_A_THREAD = textwrap.dedent("""
    import multiprocessing, os, sys, threading, time
    from concurrent.futures import ProcessPoolExecutor
    from imgembed.inference.lifetime import tie_to_parent

    def main():
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1]),
                                   initializer=tie_to_parent, initargs=(os.getpid(),))
        first = []
        # the thread waits for results, so each worker ties itself to its parent while it runs
        thread = threading.Thread(target=lambda: first.extend(f.result() for f in [pool.submit(os.getpid)
                                                                                   for _ in range(4)]))
        thread.start()
        thread.join()
        while os.path.exists(f"/proc/self/task/{thread.native_id}"):  # until the OS thread is gone
            time.sleep(0.01)
        workers = set(pool._processes)  # pid -> process, every worker the pool has
        later = {pool.submit(os.getpid).result() for _ in range(8)}
        assert later <= workers and set(pool._processes) == workers, (workers, later)
        print(" ".join(map(str, sorted(workers))), flush=True)
        time.sleep(600)

    if __name__ == "__main__":
        main()
""")


@needs_proc
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_pool_workers_outlive_the_thread_that_forked_them_but_not_the_process(tmp_path, method):
    script = tmp_path / "pool.py"
    script.write_text(POOL_FROM_A_THREAD)
    proc = subprocess.Popen([sys.executable, str(script), method], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    assert line.strip(), f"the pool did not keep its workers:\n{proc.stderr.read().decode()}"
    workers = {int(p) for p in line.split()}
    assert len(workers) == 2 and all(alive(p) for p in workers)
    below = descendants(proc.pid) | workers  # under forkserver and spawn, helpers besides the workers
    assert_none_left(left_after_kill(proc, below))


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
