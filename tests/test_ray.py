"""The Ray engine on a real local Ray cluster: same vectors, same reports, same incremental runs
as the local engine, and a run that survives its model worker being killed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from badfiles import EXPECTED, make_bad_folder
from test_faults import (
    assert_each_file_once,
    assert_none_left,
    committed,
    descendants,
    left_after_kill,
    make_folder,
    needs_proc,
    wait_for,
)

from conftest import ROOT, SAMPLES, run_cli

if os.environ.get("IMGEMBED_TEST_RAY") == "required":  # set by .ci/run: never skip there
    import ray
else:
    ray = pytest.importorskip("ray", reason="the Ray engine needs the extra: pip install -e '.[ray]'")


@pytest.fixture(scope="module")
def cluster():
    """A local two-CPU Ray cluster for this module; its address lets subprocesses join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def vectors_by_path(index_dir):
    from imgembed.index import ImageIndex

    with ImageIndex.open(index_dir) as idx:
        ids, vecs = zip(*idx.store.iter_vectors())
        rows = idx.store.rows_by_id(np.concatenate(ids))
        vecs = np.concatenate(vecs)
        return {rows[int(i)].path: v for i, v in zip(np.concatenate(ids), vecs)}, idx.store.skipped()


def test_ray_engine_writes_the_same_index_as_the_local_engine(cluster, tmp_path, model):
    from imgembed.api import RayCluster, index_folder

    folder = tmp_path / "photos"
    shutil.copytree(SAMPLES, folder)
    make_bad_folder(folder / "odd")  # unreadable files must be skipped with the same reasons
    local = index_folder(folder, tmp_path / "local", model)
    # two model actors on two CPUs: must still leave room for decoding (this once stalled)
    remote = index_folder(folder, tmp_path / "ray", model, executor=RayCluster(actors=2))
    assert (remote.added, remote.total) == (local.added, local.total) == (local.added, 80 + 8)
    assert remote.skipped == local.skipped and len(remote.skipped) == sum(v is not None for v in EXPECTED.values())

    a, skipped_a = vectors_by_path(tmp_path / "local")
    b, skipped_b = vectors_by_path(tmp_path / "ray")
    assert a.keys() == b.keys()
    cosines = np.array([float(a[p] @ b[p]) for p in a])
    assert cosines.min() >= 0.999, f"min cosine {cosines.min():.5f}"
    assert [(s.path, s.reason) for s in skipped_a] == [(s.path, s.reason) for s in skipped_b]

    again = index_folder(folder, tmp_path / "ray", model, executor=RayCluster())  # incremental: nothing to do
    assert (again.embedded, again.unchanged) == (0, 80 + 8)
    make_folder(folder / "new", 1)  # 80 new files, each one pixel off a sample image
    third = index_folder(folder, tmp_path / "ray", model, executor=RayCluster())
    assert (third.added, third.unchanged, third.total) == (80, 88, 168)


def _pids_of(title_part: str) -> list[int]:
    """Processes whose title (Ray sets it to the task or actor name) contains ``title_part``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if title_part in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _committed(index_dir: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{index_dir / 'metadata.sqlite'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def _start(folder, index, address):
    return subprocess.Popen(
        [sys.executable, "-m", "imgembed", "index", str(folder), "--index", str(index), "-q", "--json",
         "--engine", "ray", "--ray-address", address, "--batch-size", "8", "--commit-every", "8"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ray_run_survives_a_killed_model_worker_and_resumes_after_a_killed_driver(cluster, tmp_path):
    """The real CLI joins the cluster by address. Once it has committed work, its model actor's
    process is SIGKILLed: Ray restarts the actor and the run goes on committing. Later the
    driver itself is SIGKILLed; a re-run embeds only the rest, and every image is in the index
    exactly once."""
    folder = make_folder(tmp_path / "photos", 3)  # 240 distinct images
    index = tmp_path / "idx"
    proc = _start(folder, index, cluster)
    killed_actor, seen, driver_killed_at = None, set(), None
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        actors = _pids_of("MapWorker(MapBatches(_Embed))")  # decoding runs in other tasks
        seen.update(actors)
        committed = _committed(index)
        if killed_actor is None and actors and committed >= 16:
            os.kill(actors[0], signal.SIGKILL)
            killed_actor, committed_at_actor_kill = actors[0], committed
        elif killed_actor is not None and committed >= committed_at_actor_kill + 64:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            driver_killed_at = _committed(index)
            break
        time.sleep(0.1)
    _, err = proc.communicate(timeout=60)
    assert killed_actor is not None and driver_killed_at is not None, f"the run ended too early:\n{err}"
    assert seen - {killed_actor}, "no model worker took over from the killed one"
    assert driver_killed_at < 240

    rerun = _start(folder, index, cluster)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    report = json.loads(out)
    assert report["added"] == 240 - driver_killed_at and report["unchanged"] == driver_killed_at
    _, n = assert_each_file_once(index, folder)
    assert n == 240


@needs_proc
def test_a_sigkilled_driver_takes_the_local_cluster_it_started_along(tmp_path):
    """Without an address the CLI starts a local Ray cluster of its own. SIGKILLed mid-run (its
    model actor embedding, batches committed), it leaves none of that cluster's processes behind
    within a bounded wait: GCS, raylet, agents, workers, actors. (Ray alone left its dashboard and
    runtime-env agents for about a minute.)"""
    folder = make_folder(tmp_path / "photos", 3)  # 240 images
    index = tmp_path / "idx"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join another cluster
    proc = subprocess.Popen([sys.executable, "-m", "imgembed", "index", str(folder), "--index", str(index), "-q",
                             "--engine", "ray", "--batch-size", "8", "--commit-every", "8"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def mid_run():
        below = descendants(proc.pid)
        titles = " ".join(_cmdline(p) for p in below)
        return below if "raylet" in titles and "MapWorker(MapBatches(_Embed))" in titles and committed(index) >= 16 else None

    below = wait_for(mid_run, proc, what="its own raylet, a model actor and two committed chunks")
    below |= descendants(proc.pid)
    assert_none_left(left_after_kill(proc, below))


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_engine_ray_without_ray_installed_says_how_to_install(tmp_path):
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    proc = run_cli("index", SAMPLES, "--index", tmp_path / "idx", "--engine", "ray",
                   env={"PYTHONPATH": str(fake.parent)}, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'imgembed[ray]'" in lines[0], proc.stderr
    assert not (tmp_path / "idx").exists()  # refused before any work


def test_ray_options_need_the_ray_engine(tmp_path):
    proc = run_cli("index", SAMPLES, "--index", tmp_path / "idx", "--ray-address", "127.0.0.1:6379", check=False)
    assert proc.returncode == 2 and "--engine ray" in proc.stderr
