"""The Ray engine on a local multi-node cluster (ray.cluster_utils.Cluster: a head node without
CPUs and three one-CPU worker nodes, each its own raylet and object store on this machine):
decode tasks and model actors spread over the worker nodes, one worker node lost mid-run, and
every image in the index exactly once, with the local engine's vectors."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from test_faults import assert_each_file_once, make_folder
from test_ray import _committed, _start, vectors_by_path

if os.environ.get("IMGEMBED_TEST_RAY") == "required":  # set by .ci/run: never skip there
    import ray  # noqa: F401
else:
    pytest.importorskip("ray", reason="the Ray engine needs the extra: pip install -e '.[ray]'")

IMAGES = 160


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _ray_workers() -> dict[str, set[int]]:
    """For each Ray worker process title (``ray::MapBatches(_decode)``, ...), the pids of the
    raylets (nodes) running such a process: Ray workers are children of their node's raylet."""
    out: dict[str, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[0]
                if title.startswith("ray::"):
                    out.setdefault(title.split(".")[0], set()).add(_ppid(int(entry.name)))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_a_node_lost_mid_run_on_a_multi_node_cluster(tmp_path, model):
    from ray.cluster_utils import Cluster

    from imgembed.api import LocalPool, index_folder

    folder = make_folder(tmp_path / "photos", 2)  # 160 distinct images
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=1, object_store_memory=100 << 20) for _ in range(3)]
        cluster.wait_for_nodes()
        raylets = {w.all_processes["raylet"][0].process.pid: w for w in workers}
        proc = _start(folder, tmp_path / "ray", cluster.address)
        spread: dict[str, set[int]] = {}
        lost, lost_at = None, None
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline:
            for title, nodes in _ray_workers().items():
                spread.setdefault(title, set()).update(nodes & set(raylets))
            committed = _committed(tmp_path / "ray")
            embedding = spread.get("ray::MapWorker(MapBatches(_Embed))", set())
            if lost is None and committed >= 16 and len(embedding) >= 2:
                # a node that runs a model actor, lost with its raylet, its workers and its objects
                lost = sorted(embedding)[0]
                lost_at = committed
                cluster.remove_node(raylets[lost], allow_graceful=False)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=120)
        assert lost is not None, f"the run ended before a node could be lost:\n{err[-2000:]}"
        assert lost_at < IMAGES
        # work crossed nodes: decoding and model actors each ran on at least two worker nodes
        assert len(spread["ray::MapBatches(_decode)"]) >= 2, spread
        assert len(spread["ray::MapWorker(MapBatches(_Embed))"]) >= 2, spread
        if proc.returncode == 0:  # Ray rescheduled the lost node's work on the others
            assert out.lstrip().startswith("{"), f"stdout holds more than the report:\n{out[:2000]}"
            assert json.loads(out)["added"] == IMAGES
        else:  # or the run stopped, keeping what it had committed: a re-run embeds only the rest
            assert proc.returncode == 1 and "re-run to finish" in err, err[-2000:]
            done = _committed(tmp_path / "ray")
            rerun = _start(folder, tmp_path / "ray", cluster.address)
            out, err = rerun.communicate(timeout=600)
            assert rerun.returncode == 0, err[-2000:]
            report = json.loads(out)
            assert (report["added"], report["unchanged"]) == (IMAGES - done, done)
    finally:
        cluster.shutdown()
    _, n = assert_each_file_once(tmp_path / "ray", folder)
    assert n == IMAGES
    index_folder(folder, tmp_path / "local", model, executor=LocalPool(workers=0))
    a, _ = vectors_by_path(tmp_path / "local")
    b, _ = vectors_by_path(tmp_path / "ray")
    assert a.keys() == b.keys()
    cosines = np.array([float(a[p] @ b[p]) for p in a])
    assert cosines.min() >= 0.999, f"min cosine {cosines.min():.5f}"
