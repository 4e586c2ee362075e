"""Clusters of unlabelled images (imgembed.collection.clusters, api.clusters/plan_into/move_into,
`imgembed clusters`, `imgembed undo`): the graph split itself on vectors whose groups are known,
then the command on real drawings in one flat folder, their classes hidden in their file names."""

import collections
import hashlib
import json
import shutil

import numpy as np
import pytest

from imgembed import api
from imgembed.collection import clusters as cl
from imgembed.errors import InputError
from imgembed.index import ImageIndex

from conftest import SAMPLES, run_cli, run_json

CLASSES = ["birds", "clocks", "fruit", "vehicles", "fish"]


def groups_on_sphere(sizes, dim=64, spread=0.25, seed=0):
    """(vectors, truth): unit vectors scattered around one random direction per group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] / np.linalg.norm(centres[truth], axis=1, keepdims=True)
    x = x + spread * rng.normal(size=x.shape) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def same_partition(a, b):
    """Whether two labellings split the items identically (whatever the numbers)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def purity(found, truth):
    """Share of items in their cluster's most common true class."""
    return sum(collections.Counter(truth[found == c]).most_common(1)[0][1] for c in set(found)) / len(truth)


def test_separate_groups_are_found_whatever_their_number_largest_first():
    for sizes in ([40, 25, 12], [30] * 7):  # the first group holds half the graph: it stays whole
        x, truth = groups_on_sphere(sizes)
        found = cl.cluster(x)
        assert same_partition(found.labels, truth), sizes
        assert found.sizes.tolist() == sorted(sizes, reverse=True)
        # each medoid lies in its own cluster and is its most central member
        for c, m in enumerate(found.medoids):
            assert found.labels[m] == c and found.members(c)[0] == m
        assert np.all(found.cohesion > 0.5) and np.all(found.cohesion <= 1 + 1e-6)


def test_the_same_vectors_give_the_same_clusters_and_resolution_splits_finer():
    x, _ = groups_on_sphere([60, 60], spread=0.9, seed=3)
    a, b = cl.cluster(x), cl.cluster(x)
    assert np.array_equal(a.labels, b.labels)
    assert len(cl.cluster(x, resolution=8.0).sizes) > len(cl.cluster(x, resolution=0.5).sizes)


def test_louvain_beats_both_trivial_partitions_on_modularity():
    x, truth = groups_on_sphere([30, 30, 30], spread=0.6, seed=1)
    n, edges, weights = cl.knn_graph(x, 10)
    assert np.all(edges[:, 0] < edges[:, 1]) and len({tuple(e) for e in edges.tolist()}) == len(edges)
    found = cl.communities(n, edges, weights)
    q = cl.modularity(n, edges, weights, found)
    assert q > cl.modularity(n, edges, weights, np.zeros(n, np.int64)) + 0.3
    assert q > cl.modularity(n, edges, weights, np.arange(n))
    assert q >= cl.modularity(n, edges, weights, truth) - 1e-9  # as good as the true split


def test_above_the_sample_size_every_vector_is_still_clustered_and_groups_kept():
    x, truth = groups_on_sphere([150, 100, 50], seed=2)
    found = cl.cluster(x, sample=90)
    assert len(found.labels) == len(x)
    assert same_partition(found.labels, truth)


def test_tiny_and_empty_inputs():
    assert cl.cluster(np.eye(4, dtype=np.float32)[:1]).labels.tolist() == [0]
    assert cl.cluster(np.eye(4, dtype=np.float32)[:2]).labels.tolist() == [0, 0]
    assert cl.neighbours_for(40) == 6 and cl.neighbours_for(10_000) == cl.K and cl.neighbours_for(3) == 2
    with pytest.raises(InputError, match="nothing to cluster"):
        cl.cluster(np.zeros((0, 8), np.float32))
    with pytest.raises(InputError, match="resolution"):
        cl.cluster(np.eye(4, dtype=np.float32), resolution=0)


def test_real_drawings_cluster_by_their_hidden_class_and_resolution_splits_finer(sample_index):
    def split(**kw):
        report = api.clusters(sample_index, unlabelled_only=False, **kw)
        rows = [r for c in report.clusters for r in c.rows]
        assert len({r.id for r in rows}) == len(rows) == report.images
        assert [c.size for c in report.clusters] == sorted((c.size for c in report.clusters), reverse=True)
        truth = np.array([r.label for r in rows])
        return np.repeat(np.arange(len(report.clusters)), [c.size for c in report.clusters]), truth

    found, truth = split()
    classes = len(set(truth.tolist()))
    assert 3 <= len(set(found.tolist())) <= 2 * classes
    assert purity(found, truth) >= 0.4  # 1 / classes by chance
    assert purity(truth, found) >= 0.7  # and a class is not scattered over many clusters
    finer, _ = split(resolution=2.0)
    assert len(set(finer.tolist())) > len(set(found.tolist())) and purity(finer, truth) >= purity(found, truth)


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def flat(tmp_path, model):
    """(folder, index): five sample classes' drawings in one folder, named <class>_<name>, indexed."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for c in CLASSES:
        for f in sorted((SAMPLES / c).glob("*.png")):
            shutil.copy(f, folder / f"{c}_{f.name}")
    index = tmp_path / "index"
    api.index_folder(folder, index, model, executor=api.LocalPool(workers=0))
    return folder, index


def test_cli_lists_each_image_once_and_a_dry_run_moves_nothing(flat, tmp_path):
    folder, index = flat
    before = snapshot(folder)
    found = run_json("clusters", "--index", index)
    paths = [p for c in found for p in c["paths"]]
    assert sorted(paths) == sorted(str(folder / name) for name in before)
    assert all(c["representative"] == c["paths"][0] and c["size"] == len(c["paths"]) for c in found)
    classes = np.array([p.rsplit("/", 1)[1].split("_")[0] for p in paths])
    numbers = np.repeat(np.arange(len(found)), [c["size"] for c in found])
    assert purity(numbers, classes) >= 0.55
    page = tmp_path / "clusters.html"
    lines = run_cli("clusters", "--index", index, "--html", page).stdout.splitlines()
    assert lines[-1] == f"{len(paths)} images in {len(found)} clusters"
    assert page.read_text().count("<h2>cluster ") == len(found)
    plan = run_json("clusters", "--index", index, "--into", tmp_path / "sorted", "--dry-run")
    assert snapshot(folder) == before and not (tmp_path / "sorted").exists()
    assert [len(c["moves"]) for c in plan] == [c["size"] for c in found]


def test_into_moves_what_it_planned_indexes_the_folders_and_undo_restores_it(flat, tmp_path):
    folder, index = flat
    before = snapshot(folder)
    into = tmp_path / "sorted"
    (into / "cluster-01").mkdir(parents=True)  # an earlier run's folder: never poured into
    (into / "cluster-01" / "keep.txt").write_text("mine")
    refused = run_cli("clusters", "--index", index, "--into", into, check=False)  # no terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr and snapshot(folder) == before
    plan = run_json("clusters", "--index", index, "--into", into, "--dry-run")
    assert plan[0]["folder"] == str(into / "cluster-01-2")
    done = run_json("clusters", "--index", index, "--into", into, "--yes")
    assert not any("failed" in m for c in done for m in c["moves"])
    assert [[m["to"] for m in c["moves"]] for c in done] == [[m["to"] for m in c["moves"]] for c in plan]
    assert not list(folder.iterdir())
    for c in done:
        assert sorted(p.name for p in (tmp_path / c["folder"]).iterdir()) == sorted(m["to"].rsplit("/", 1)[1]
                                                                                  for m in c["moves"])
    assert (into / "cluster-01" / "keep.txt").read_text() == "mine"
    with ImageIndex.open(index) as idx:  # the index follows: the images under their cluster's label
        labels = idx.store.labels()
        assert sum(labels.values()) == len(before)
        assert set(labels) == {c["folder"].rsplit("/", 1)[1] for c in done}
    with pytest.raises(InputError, match="--all"):  # now every image has a label
        api.clusters(index)
    run_cli("undo", "--index", index)
    assert snapshot(folder) == before
    assert snapshot(into) == {"cluster-01/keep.txt": hashlib.sha256(b"mine").hexdigest()}
    query = next(folder.glob("fish_*"))
    hits = run_json("search", query, "--index", index, "-k", "1")
    assert hits[0]["results"][0]["path"] == str(query)


def test_bad_targets_and_empty_indexes_get_one_line(flat, tmp_path, sample_index):
    folder, index = flat
    with pytest.raises(InputError, match="holds the indexed folder"):
        api.plan_into(api.clusters(index), tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="a file, not a folder"):
        api.plan_into(api.clusters(index), tmp_path / "file")
    proc = run_cli("clusters", "--index", sample_index, check=False)
    assert proc.returncode == 1 and "--all" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert run_cli("clusters", "--index", index, "--dry-run", check=False).returncode == 2
