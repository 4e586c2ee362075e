"""Search expansion (imgembed.index.expansion): neighbour lists kept up to date as images come
and go, old indexes searching as before, and everything but `search` left on the raw vectors."""

import json
import shutil
import sqlite3

import numpy as np
import pytest

from imgembed.api import IndexOptions, LocalPool, Searcher, index_folder, rebuild_index
from imgembed.index import ImageIndex
from imgembed.index.expansion import DEFAULT, NONE, Expansion, augment, order
from imgembed.index.store import NewImage

from conftest import QUERIES, SAMPLES, TOY_IDENTITY, TOY_SOURCE, copy_classes, run_cli, run_json


def toy_images(n, seed, start=0, dim=32, groups=12):
    """Unit vectors in ``groups`` loose clusters, as NewImage rows named by number."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(groups, dim))
    x = centres[rng.integers(0, groups, n)] + 0.8 * rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return [NewImage("/toy", f"{start + i:05d}.png", None, 1, 1, f"h{start + i}", 8, 8, v) for i, v in enumerate(x)]


def lists_by_path(directory):
    """{path: (neighbour paths best first, augmented vector)} read straight from SQLite."""
    db = sqlite3.connect(directory / "metadata.sqlite")
    path = dict(db.execute("SELECT id, path FROM images"))
    lists = {}
    for i, nb, sim in db.execute("SELECT id, nb, sim FROM neighbours ORDER BY id, sim DESC, nb"):
        lists.setdefault(path[i], []).append(path[nb])
    aug = {path[i]: np.frombuffer(v, "<f4") for i, v in db.execute("SELECT id, vector FROM augmented")}
    db.close()
    return {p: (lists.get(p, []), aug[p]) for p in aug}


def build(directory, images, remove_paths=(), expansion=None):
    with ImageIndex.open_for_write(directory, {**TOY_IDENTITY, "dim": 32}, TOY_SOURCE, expansion=expansion) as idx:
        gone = [r.id for r in idx.store.rows_under("/toy").values() if r.path in set(remove_paths)]
        idx.commit(add=images, remove=gone)
        idx.save()


def test_adding_and_removing_images_updates_the_lists_as_a_fresh_index_has_them(tmp_path):
    first, more = toy_images(300, 1), toy_images(80, 2, start=300)
    build(tmp_path / "grown", first)
    build(tmp_path / "grown", more[:40])
    build(tmp_path / "grown", more[40:], remove_paths=[f"{i:05d}.png" for i in range(0, 300, 7)])
    kept = [im for im in first if int(im.path[:5]) % 7] + more
    build(tmp_path / "fresh", kept)
    grown, fresh = lists_by_path(tmp_path / "grown"), lists_by_path(tmp_path / "fresh")
    assert set(grown) == set(fresh) == {im.path for im in kept}
    assert all(len(nb) == DEFAULT.k for nb, _ in fresh.values())
    assert {p: nb for p, (nb, _) in grown.items()} == {p: nb for p, (nb, _) in fresh.items()}
    assert max(float(np.abs(grown[p][1] - fresh[p][1]).max()) for p in fresh) < 1e-5


def test_augmented_vectors_are_the_weighted_sum_of_the_neighbours():
    x = np.eye(4, dtype=np.float32)[:1]
    nb = np.array([[[0, 1, 0, 0], [0, 0, 1, 0]]], np.float32)
    got = augment(x, nb, np.array([[0.5, -0.2]], np.float32), alpha=1.0)
    want = np.array([1, 0.5, 0, 0]) / np.hypot(1, 0.5)  # a negative cosine weighs nothing
    assert np.allclose(got[0], want, atol=1e-6)


def test_near_duplicates_and_the_nearest_image_keep_the_first_places():
    raw = np.array([0.70, 1.0, 0.80, 0.99999, 0.75])
    key = np.array([0.95, 0.60, 0.50, 0.65, 0.90])  # the expanded ranking alone: 0, 4, 3, 1, 2
    positions, keys = order(raw, key)
    assert positions.tolist() == [1, 3, 2, 0, 4]  # identical ones, the nearest other, then by key
    assert keys.tolist() == sorted(keys.tolist(), reverse=True)
    assert order(np.array([0.5, 0.9]), np.array([0.9, 0.1]))[0].tolist() == [1, 0]
    key = np.concatenate([[0.1, 0.9, 0.2], np.linspace(0.05, 0.0, 12)])  # the expansion favours 1
    near = np.concatenate([[0.86, 0.70, 0.90], np.linspace(0.5, 0.6, 12)])  # the 10th other: 0.564
    assert order(near, key)[0][:3].tolist() == [2, 0, 1]  # two near-duplicates first, in raw order
    crowded = np.concatenate([[0.86, 0.70, 0.90], np.linspace(0.8, 0.84, 12)])  # a background of 0.81
    assert order(crowded, key)[0][:3].tolist() == [2, 1, 0]  # 0.86 is ordinary here: only the nearest stays


def test_an_index_without_an_expansion_searches_exactly_as_before(tmp_path, model):
    folder = copy_classes(tmp_path / "images", "birds", "fish", "flowers", "fruit")
    index = tmp_path / "idx"
    index_folder(folder, index, model, executor=LocalPool(workers=0))
    queries = sorted(folder.rglob("*.png"))[::5]
    with Searcher(index, model, expansion="none") as s:
        raw = [[(h.row.path, round(h.score, 5)) for h in r.hits] for r in s.search(queries, 8)]
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["expansion"] == DEFAULT.to_dict()  # new indexes expand
    del manifest["expansion"]  # as every index written before there was a choice
    (index / "manifest.json").write_text(json.dumps(manifest))
    with Searcher(index, model) as s:
        assert s.index.expansion == NONE
        old = [[(h.row.path, round(h.score, 5)) for h in r.hits] for r in s.search(queries, 8)]
    assert old == raw
    with Searcher(index, model, expansion="dba+aqe") as e:  # query expansion alone, on the raw vectors
        assert e.expansion_of(e.index) == Expansion(0, DEFAULT.alpha, DEFAULT.m, DEFAULT.beta, DEFAULT.mix)


def test_expansion_finds_more_of_the_class_and_leaves_classify_and_duplicates_alone(sample_index, model, tmp_path):
    """On sample_images (8 classes of 10), every image searched: the expanded ranking puts more
    of its class among the first 9 others than the raw one; classify and duplicates read the
    raw vectors, so they answer the same whichever ranking search uses."""
    files = sorted(SAMPLES.rglob("*.png"))

    def precision(expansion):
        with Searcher(sample_index, model, expansion=expansion) as s:
            results = s.search(files, 10)
            votes = [c.to_dict() for c in s.classify(files[:16])]
        hits = [[h.row.label for h in r.hits if h.row.full_path != str(f)][:9] for f, r in zip(files, results)]
        return np.mean([np.mean([lab == f.parent.name for lab in h]) for f, h in zip(files, hits)]), votes

    raw, raw_votes = precision("none")
    expanded, votes = precision("index")
    queries = sorted(QUERIES.glob("*.png"))  # not indexed: the nearest image comes first either way
    with Searcher(sample_index, model) as s, Searcher(sample_index, model, expansion="none") as r:
        assert [x.hits[0].row.path for x in s.search(queries, 5)] == [x.hits[0].row.path for x in r.search(queries, 5)]
    assert expanded > raw + 0.005, (raw, expanded)
    assert votes == raw_votes
    raw_index = shutil.copytree(sample_index, tmp_path / "raw")
    with ImageIndex.open_for_write(raw_index, None, expansion=NONE) as idx:
        idx.save()
    assert run_json("duplicates", "--index", raw_index, "--threshold", "0.8") == \
        run_json("duplicates", "--index", sample_index, "--threshold", "0.8")


def test_turning_expansion_off_and_on_from_the_cli(tmp_path):
    folder = copy_classes(tmp_path / "images", "clocks", "fish")
    index = tmp_path / "idx"
    run_cli("index", folder, "--index", index, "--no-expand", "--quiet")
    info = run_json("info", "--index", index)
    assert info["expansion"]["dba_k"] == 0 and "expansion" not in info["manifest"]
    out = run_cli("rebuild", "--index", index, "--expand").stdout
    assert f"DBA k={DEFAULT.k}" in out
    info = run_json("info", "--index", index)
    assert (info["expansion"]["lists"], info["expansion"]["missing"]) == (20, 0)
    text = run_cli("info", "--index", index).stdout
    assert "neighbour lists of 20 images" in text
    hits = run_json("search", folder / "fish" / "dolphin.png", "--index", index, "-k", "3")[0]["results"]
    raw = run_json("search", folder / "fish" / "dolphin.png", "--index", index, "-k", "3", "--expansion", "none")
    assert hits[0]["path"] == raw[0]["results"][0]["path"] == str((folder / "fish" / "dolphin.png").resolve())
    assert hits[0]["score"] == raw[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)  # cosines


def test_a_reader_searches_while_lists_are_missing_and_the_next_writer_makes_them(tmp_path):
    build(tmp_path / "idx", toy_images(120, 3))
    with ImageIndex.open_for_write(tmp_path / "idx", None) as idx:
        idx.commit(add=(later := toy_images(30, 4, start=120)))
        idx.vectors = idx.vectors.publish(idx.path, "")  # as a run killed before its save() ends
    with ImageIndex.open(tmp_path / "idx") as idx:
        assert idx.store.expansion_state() == (120, 0)
        q = later[0].vector
        hits = idx.search(q[None], 5, expansion=idx.expansion)[0]  # 00120 has no list yet: its own vector
        assert len({h.row.path for h in hits}) == 5 and hits[0].row.path == "00120.png"  # itself first
        assert [h.row.path for h in idx.search(q[None], 1)[0]] == ["00120.png"]
    info = run_json("info", "--index", tmp_path / "idx")
    assert info["expansion"]["missing"] == 30
    build(tmp_path / "idx", [])
    with ImageIndex.open(tmp_path / "idx") as idx:
        assert idx.store.expansion_state() == (150, 0)


def test_search_expansion_choices_are_checked(sample_index, model):
    from imgembed.errors import InputError

    with pytest.raises(InputError, match="unknown search expansion"):
        Searcher(sample_index, model, expansion="everything")
    assert Expansion.from_dict(DEFAULT.to_dict()) == DEFAULT
    assert Expansion.from_dict(None) == NONE and not NONE.active
    with Searcher(sample_index, model, expansion="dba") as s:
        assert s.expansion_of(s.index) == Expansion(DEFAULT.k, DEFAULT.alpha, 0, DEFAULT.beta, DEFAULT.mix)


def test_index_options_turn_expansion_off(tmp_path, model):
    folder = copy_classes(tmp_path / "images", "bugs")
    index_folder(folder, tmp_path / "idx", model, IndexOptions(expand=False), executor=LocalPool(workers=0))
    with ImageIndex.open(tmp_path / "idx") as idx:
        assert idx.expansion == NONE and idx.store.expansion_state() == (0, 0)
    rebuild_index(tmp_path / "idx", expand=True)
    with ImageIndex.open(tmp_path / "idx") as idx:
        assert idx.expansion == DEFAULT and idx.store.expansion_state() == (10, 0)
