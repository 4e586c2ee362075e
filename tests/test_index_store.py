"""The index directory: round trip, id mapping, refusals of mismatched or damaged files."""

import json
import shutil
import sqlite3

import numpy as np
import pytest

from imgembed.errors import IndexCorruptError, IndexNotFoundError, IndexVersionError, ModelMismatchError
from imgembed.index import DATABASE, FAISS_FILE, MANIFEST, ImageIndex, vectors
from imgembed.index.store import NewImage, Skipped

from conftest import TOY_IDENTITY as IDENTITY
from conftest import TOY_SOURCE as SOURCE


def unit(rng, n, d=8):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def new_image(i, vector, label="a"):
    return NewImage("/root", f"{label}/img{i}.png", label, 100 + i, 1_000 + i, f"hash{i}", 10, 20, vector)


# The toy index most tests here build: 30 images in two labels, one skipped file.
VECS = unit(np.random.default_rng(0), 30)
IMAGES = [new_image(i, v, "a" if i % 2 else "b") for i, v in enumerate(VECS)]
SKIPPED = [Skipped("/root", "bad.jpg", "empty file", 0, 1)]


def test_round_trip_ids_map_to_their_rows(built):
    directory, ids = built(IMAGES, skipped=SKIPPED)
    with ImageIndex.open(directory, IDENTITY) as idx:
        assert len(idx) == 30
        hits = idx.search(VECS, k=3)
        for i, row_hits in enumerate(hits):
            top = row_hits[0]
            assert top.rank == 1 and top.row.id == ids[i]
            assert top.row.path.endswith(f"img{i}.png") and top.row.hash == f"hash{i}"
            assert top.score == pytest.approx(1.0, abs=1e-5)
            assert [h.score for h in row_hits] == sorted((h.score for h in row_hits), reverse=True)
        assert idx.store.labels() == {"a": 15, "b": 15}
        assert [s.path for s in idx.store.skipped()] == ["bad.jpg"]
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["counts"] == {"images": 30, "skipped": 1, "labels": 2}
    assert manifest["model"] == IDENTITY and manifest["format_version"] == 1


def test_search_matches_brute_force(built):
    directory, ids = built(IMAGES, skipped=SKIPPED)
    queries = unit(np.random.default_rng(1), 5)
    with ImageIndex.open(directory) as idx:
        hits = idx.search(queries, k=10)
    sims = queries @ VECS.T
    for q, row_hits in enumerate(hits):
        expected = [ids[j] for j in np.argsort(-sims[q])[:10]]
        assert [h.row.id for h in row_hits] == expected


def test_removal_keeps_ids_aligned(built):
    directory, ids = built(IMAGES, skipped=SKIPPED)
    with ImageIndex.open_for_write(directory, IDENTITY, SOURCE) as idx:
        idx.commit(remove=ids[:10])
        idx.save()
    with ImageIndex.open(directory) as idx:
        assert len(idx) == 20
        top = idx.search(VECS[10:], k=1)
        assert [h[0].row.id for h in top] == list(ids[10:])


def test_model_mismatch_is_refused(built):
    directory, _ = built(IMAGES, skipped=SKIPPED)
    other = {**IDENTITY, "weights": "imagenet:x"}
    with pytest.raises(ModelMismatchError, match=r"manifest.json.*weights: index has 'none:seed0', model has 'imagenet:x'"):
        ImageIndex.open(directory, other)
    with pytest.raises(ModelMismatchError):
        ImageIndex.open_for_write(directory, other, SOURCE)


def test_truncated_faiss_file_is_named(built):
    directory, _ = built(IMAGES, skipped=SKIPPED)
    path = directory / FAISS_FILE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(IndexCorruptError, match=r"vectors\.faiss: truncated or damaged FAISS file"):
        ImageIndex.open(directory)


def test_faiss_out_of_step_is_reported_searched_correctly_then_rebuilt_by_a_writer(built):
    directory, ids = built(IMAGES, skipped=SKIPPED)
    vectors.save(vectors.build_index(8, np.asarray(ids[:5]), VECS[:5]), directory / FAISS_FILE)
    with ImageIndex.open(directory) as idx:  # as a killed writer leaves it: named, and worked around
        assert "vectors.faiss: holds 5 vectors but metadata.sqlite has 30 images" in idx.problem
        assert idx.search(VECS[29:], k=1)[0][0].row.id == ids[29]
    with ImageIndex.open_for_write(directory, IDENTITY, SOURCE) as idx:  # rebuilds from stored vectors
        assert len(idx) == 30
    with ImageIndex.open(directory) as idx:
        assert idx.problem is None and idx.search(VECS[29:], k=1)[0][0].row.id == ids[29]


def test_damaged_database_and_manifest_are_named(built, tmp_path):
    directory, _ = built(IMAGES, skipped=SKIPPED)
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    (copy / DATABASE).write_bytes(b"garbage" * 100)
    for extra in ("-wal", "-shm"):
        (copy / (DATABASE + extra)).unlink(missing_ok=True)
    with pytest.raises(IndexCorruptError, match="metadata.sqlite: damaged metadata database"):
        ImageIndex.open(copy)
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(IndexCorruptError, match="manifest.json: damaged manifest"):
        ImageIndex.open(directory)


def test_newer_format_and_schema_are_refused(built):
    directory, _ = built(IMAGES, skipped=SKIPPED)
    db = sqlite3.connect(directory / DATABASE)
    with db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(IndexVersionError, match="schema version 99"):
        ImageIndex.open(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["format_version"] = 7
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexVersionError, match="format version 7"):
        ImageIndex.open(directory)


def test_missing_index_says_how_to_build_one(tmp_path):
    with pytest.raises(IndexNotFoundError, match="imgembed index FOLDER --index"):
        ImageIndex.open(tmp_path / "nothing")


def test_atomic_path_replaces_whole_files_or_nothing(tmp_path):
    from imgembed.imaging.files import atomic_path

    target = tmp_path / "manifest.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
