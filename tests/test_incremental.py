"""Incremental updates, several roots, remove/check/repair, the writer lock, and hostile files."""

import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from imgembed.api import IndexOptions, LocalPool, check_index, index_folder, remove_paths
from imgembed.errors import IndexLockedError, RemovalRefusedError
from imgembed.index import FAISS_FILE, ImageIndex, vectors
from imgembed.index.lock import WriterLock
from imgembed.train.featcache import plain_transform

from conftest import CLASSES, SAMPLES, copy_classes, run_cli, run_json


def snapshot(index_dir):
    """{full path: vector} of an index, read straight from its stored rows."""
    with ImageIndex.open(index_dir) as idx:
        rows = {r[0]: f"{r[1]}/{r[2]}" for r in idx.store.db.execute("SELECT id, root, path FROM images")}
        out = {}
        for ids, vecs in idx.store.iter_vectors():
            out.update((rows[int(i)], v) for i, v in zip(ids, vecs))
        return out


def test_changes_between_runs_match_a_fresh_index(tmp_path, model):
    folder = copy_classes(tmp_path / "photos", "fish", "fruit", "clocks")
    index = tmp_path / "idx"
    first = index_folder(folder, index, model, executor=LocalPool(workers=0))
    assert first.added == 30
    os.rename(folder / "fish" / "dolphin.png", folder / "fish" / "renamed dolphin.png")  # renamed
    (folder / "birds").mkdir()
    os.rename(folder / "fruit" / "pear.png", folder / "birds" / "pear.png")  # moved to another label
    (folder / "clocks" / "clock01.png").unlink()  # deleted
    os.utime(folder / "clocks" / "clock05.png", (1, 1))  # touched, same bytes
    Image.open(SAMPLES / "mammals" / "elephant_01.png").save(folder / "fruit" / "banana.png")  # edited
    shutil.copy(SAMPLES / "bugs" / "ladybug_01.png", folder / "fish" / "new.png")  # added
    report = index_folder(folder, index, model, executor=LocalPool(workers=0))
    counts = (report.added, report.updated, report.moved, report.removed, report.unchanged)
    assert counts == (1, 1, 2, 1, 26), counts
    fresh = tmp_path / "fresh"
    index_folder(folder, fresh, model, executor=LocalPool(workers=0))
    a, b = snapshot(index), snapshot(fresh)
    assert set(a) == set(b) and len(a) == 30
    assert min(float(np.dot(a[k], b[k])) for k in a) > 0.9999
    with ImageIndex.open(index) as idx:
        labels = {r.path: r.label for r in idx.store.rows_under(str(folder.resolve())).values()}
    assert labels["birds/pear.png"] == "birds"
    again = index_folder(folder, index, model, executor=LocalPool(workers=0))
    assert (again.added, again.updated, again.moved, again.removed, again.unchanged) == (0, 0, 0, 0, 30)


def test_an_empty_or_unmounted_folder_never_wipes_the_index(tmp_path, model):
    """An unmounted drive leaves an empty mount point: re-indexing it must stop before changing
    anything, with one line that says what to do; --allow-removal does remove."""
    folder = copy_classes(tmp_path / "photos", "fish", "fruit")
    index = tmp_path / "idx"
    index_folder(folder, index, model, executor=LocalPool(workers=0))
    before = snapshot(index)
    for label in ("fish", "fruit"):
        shutil.rmtree(folder / label)
    with pytest.raises(RemovalRefusedError, match="is empty; refusing to remove 20 of 20"):
        index_folder(folder, index, model, executor=LocalPool(workers=0))
    proc = run_cli("index", folder, "--index", index, "-q", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--allow-removal" in proc.stderr
    assert snapshot(index).keys() == before.keys()
    assert run_json("index", folder, "--index", index, "-q", "--no-prune")["removed"] == 0  # keeps them
    assert run_json("index", folder, "--index", index, "-q", "--allow-removal")["removed"] == 20


def test_losing_most_of_a_large_folder_is_refused_but_ordinary_deletions_pass(tmp_path, model):
    folder = copy_classes(tmp_path / "photos", *CLASSES)
    index = tmp_path / "idx"
    total = index_folder(folder, index, model, executor=LocalPool(workers=0)).total
    assert total == 80
    files = sorted(folder.rglob("*.png"))
    for f in files[:45]:  # over half of 80, but under the 50 that makes a mass removal
        f.unlink()
    assert index_folder(folder, index, model, executor=LocalPool(workers=0)).removed == 45
    shutil.rmtree(folder)
    copy_classes(folder, *CLASSES)
    back = index_folder(folder, index, model, executor=LocalPool(workers=0))
    assert (back.added, back.restored) == (0, 45)  # their vectors were kept: nothing embedded
    for f in files[:60]:  # a half-copied folder: 60 of 80 missing
        f.unlink()
    with pytest.raises(RemovalRefusedError, match="lacks 60 of its 80 indexed images"):
        index_folder(folder, index, model, executor=LocalPool(workers=0))
    assert len(snapshot(index)) == 80


def test_files_that_vanish_and_come_back_get_their_vectors_back(tmp_path, model):
    """Inside a root, across roots in either order, and not after `gc` or the retention time."""
    a, b = copy_classes(tmp_path / "a", "fish", "fruit"), tmp_path / "b"
    index = tmp_path / "idx"
    index_folder(a, index, model, executor=LocalPool(workers=0))
    before = snapshot(index)
    shutil.move(a / "fish" / "dolphin.png", tmp_path / "dolphin.png")  # away for one run
    assert index_folder(a, index, model, executor=LocalPool(workers=0)).removed == 1
    assert run_json("info", "--index", index)["tombstones"] == 1
    shutil.move(tmp_path / "dolphin.png", a / "dolphin_again.png")  # back, elsewhere in the root
    back = index_folder(a, index, model, executor=LocalPool(workers=0))
    assert (back.added, back.restored, back.total) == (0, 1, 20)
    assert np.array_equal(snapshot(index)[f"{a.resolve()}/dolphin_again.png"], before[f"{a.resolve()}/fish/dolphin.png"])
    # a move from root a to root b, the source indexed first: a tombstone, then a restore
    b.mkdir()
    shutil.move(a / "fruit", b / "fruit")
    assert index_folder(a, index, model, executor=LocalPool(workers=0)).removed == 10
    moved = index_folder(b, index, model, executor=LocalPool(workers=0))
    assert (moved.added, moved.restored) == (0, 10)
    # ... and the destination indexed first: the live row's vector is reused
    shutil.move(a / "fish", b / "fish")
    first = index_folder(b, index, model, executor=LocalPool(workers=0))
    assert (first.added, first.restored) == (0, 9)
    assert index_folder(a, index, model, executor=LocalPool(workers=0)).removed == 9  # dolphin_again.png stays in a
    after = snapshot(index)
    for name, vector in before.items():
        moved_to = name.replace(f"{a.resolve()}/", f"{b.resolve()}/").replace(f"{b.resolve()}/fish/dolphin.png",
                                                                            f"{a.resolve()}/dolphin_again.png")
        assert np.array_equal(after[moved_to], vector), name
    # gc forgets them: a file coming back after it is embedded again
    assert run_json("gc", "--index", index)["dropped"] == 9  # restores consumed the other tombstones
    shutil.copy(b / "fish" / "seahorse.png", tmp_path / "seahorse.png")
    remove_paths(index, [b / "fish" / "seahorse.png"])
    with ImageIndex.open_for_write(index, None) as idx:  # pretend it was removed 31 days ago
        with idx.store.db:
            idx.store.db.execute("UPDATE removed SET removed_at = removed_at - 31 * 86400")
    (b / "fish" / "seahorse.png").unlink()
    shutil.copy(tmp_path / "seahorse.png", b / "seahorse2.png")
    again = index_folder(b, index, model, executor=LocalPool(workers=0))
    assert (again.added, again.restored) == (1, 0)


def test_pruning_one_root_never_touches_another(tmp_path, model):
    a = copy_classes(tmp_path / "a", "fish")
    b = copy_classes(tmp_path / "b", "fruit")
    index = tmp_path / "idx"
    index_folder(a, index, model, executor=LocalPool(workers=0))
    index_folder(b, index, model, executor=LocalPool(workers=0))
    shutil.rmtree(a / "fish")
    # all of a: see below
    report = index_folder(a, index, model, options=IndexOptions(allow_removal=True), executor=LocalPool(workers=0))
    assert report.removed == 10 and report.total == 10
    with ImageIndex.open(index) as idx:
        assert idx.store.roots() == [str(b.resolve())]


def test_remove_and_check_repair(tmp_path, model):
    folder = copy_classes(tmp_path / "p", "fish", "fruit")
    index = tmp_path / "idx"
    index_folder(folder, index, model, executor=LocalPool(workers=0))
    assert remove_paths(index, [folder / "fish" / "dolphin.png"])["removed"] == 1
    assert run_json("remove", folder / "fruit", "--index", index)["removed"] == 10
    assert run_json("info", "--index", index)["images"] == 9
    assert check_index(index)["problems"] == []
    with ImageIndex.open(index) as idx:  # a crash between SQLite commits and the FAISS save
        ids, vecs = next(idx.store.iter_vectors())
    vectors.save(vectors.build_index(idx.dim, ids[:3], vecs[:3]), index / FAISS_FILE)
    bad = run_cli("check", "--index", index, check=False)
    assert bad.returncode == 1 and "holds 3 vectors but metadata.sqlite has 9 images" in bad.stdout
    warned = run_cli("info", "--index", index)
    assert "warning:" in warned.stderr and "check --repair" in warned.stderr
    assert run_json("check", "--index", index, "--repair")["repaired"]
    assert run_cli("check", "--index", index).stdout.strip().endswith("9 images, ok")


def test_second_writer_is_refused_naming_the_holder_or_waits(tmp_path, model):
    folder = copy_classes(tmp_path / "p", "fish")
    index = tmp_path / "idx"
    index_folder(folder, index, model, executor=LocalPool(workers=0))
    lock = WriterLock(index).acquire()
    try:
        with pytest.raises(IndexLockedError, match=rf"being written by PID {os.getpid()} .*--wait"):
            index_folder(folder, index, model, executor=LocalPool(workers=0))
        refused = run_cli("index", folder, "--index", index, check=False)
        assert refused.returncode == 1 and f"PID {os.getpid()}" in refused.stderr
        threading.Timer(2.0, lock.release).start()
        started = time.monotonic()
        report = index_folder(folder, index, model, options=IndexOptions(wait=True), executor=LocalPool(workers=0))
        assert time.monotonic() - started >= 1.5 and report.unchanged == 10
    finally:
        lock.release()
    with ImageIndex.open(index) as idx:  # readers never need the lock
        assert len(idx) == 10


def test_hostile_files_are_skipped_with_reasons(tmp_path, model):
    folder = tmp_path / "hostile"
    folder.mkdir()
    photo = Image.open(SAMPLES / "fruit" / "orange_simple.png").convert("RGB")
    photo.save(folder / "good.jpg", quality=90)
    data = (folder / "good.jpg").read_bytes()
    (folder / "cut in the middle.jpg").write_bytes(data[: len(data) // 2])
    photo.save(folder / "bad_icc.jpg", icc_profile=b"\0garbage profile" * 8)
    photo.save(folder / "bad_exif.jpg", exif=b"Exif\0\0II*\0\x08\0\0\0\xff\xff")
    Image.new("RGB", (1, 1), "red").save(folder / "one_pixel.png")
    Image.new("RGB", (20000, 10), "blue").save(folder / "very_wide.png")
    Image.open(SAMPLES / "fish" / "dolphin.png").save(folder / "name with\nnewline.png")
    Image.open(SAMPLES / "birds" / "rooster_01.png").save(os.fsdecode(bytes(folder) + b"/latin1-\xe9t\xe9.png"))
    os.mkfifo(folder / "pipe.jpg")
    report = index_folder(folder, tmp_path / "idx", model, executor=LocalPool(workers=1))
    skipped = {os.path.basename(p): reason for p, reason in report.skipped}
    assert set(skipped) == {"cut in the middle.jpg"}, skipped
    assert report.added == 7  # the FIFO is not a file: never opened, so it cannot block
    hits = run_json("search", folder / "name with\nnewline.png", "--index", tmp_path / "idx", "-k", "1")
    assert hits[0]["results"][0]["path"].endswith("name with\nnewline.png")


def _hang_on_dolphin(monkeypatch):
    from imgembed.imaging import decode as images

    real = images.read_image

    def slow_for_dolphin(path, **kw):
        if os.path.basename(path) == "dolphin.png":
            time.sleep(30)
        return real(path, **kw)

    monkeypatch.setattr(images, "read_image", slow_for_dolphin)


def test_a_stuck_decode_is_skipped(tmp_path, monkeypatch, model):
    folder = copy_classes(tmp_path / "p", "fish")
    _hang_on_dolphin(monkeypatch)
    started = time.monotonic()
    report = index_folder(folder, tmp_path / "idx", model, options=IndexOptions(decode_timeout=1.0),
                          executor=LocalPool(workers=0))
    assert time.monotonic() - started < 25
    assert [(os.path.basename(p), r) for p, r in report.skipped] == [
        ("dolphin.png", "decoding took longer than 1 s (stuck or hostile file)")]
    assert report.added == 9


def test_a_dying_decode_worker_stops_the_run_with_its_reason_and_the_next_run_resumes(tmp_path, monkeypatch, model):
    """A codec that crashes its process (or the OOM killer) ends the run with one typed error
    saying what to do, not a hang or a traceback; nothing committed is lost and the next run
    embeds the rest, each image once."""
    from imgembed.errors import EngineError
    from imgembed.imaging import decode as images

    folder = copy_classes(tmp_path / "p", "fish", "fruit")
    parent, real = os.getpid(), images.read_image

    def crash_on_dolphin(path, **kw):
        if os.path.basename(path) == "dolphin.png" and os.getpid() != parent:
            os._exit(1)  # what a segfault in a decoder looks like from outside
        return real(path, **kw)

    monkeypatch.setattr(images, "read_image", crash_on_dolphin)
    index = tmp_path / "idx"
    with pytest.raises(EngineError, match="a decode worker died .* run again to resume"):
        index_folder(folder, index, model, options=IndexOptions(batch_size=4), executor=LocalPool(workers=2))
    monkeypatch.undo()
    report = index_folder(folder, index, model, options=IndexOptions(batch_size=4), executor=LocalPool(workers=2))
    assert report.total == 20 and report.added + report.unchanged == 20 and not report.skipped
    with ImageIndex.open(index) as idx:
        assert len(idx) == 20


def test_a_stuck_decode_is_skipped_by_train_and_evaluate_too(tmp_path, monkeypatch, torch_model):
    """`train` and `evaluate` read images through the feature cache (frozen backbone) or the
    fine-tuning loader: both decode through the same time-limited path as `index`."""
    from imgembed.train.featcache import FeatureCache
    from imgembed.train.loop import _Images

    folder = copy_classes(tmp_path / "p", "fish")
    paths = sorted(folder.rglob("*.png"))
    _hang_on_dolphin(monkeypatch)
    started = time.monotonic()
    got = FeatureCache(tmp_path / "cache", torch_model).features(paths, 2, workers=0, decode_timeout=1.0)
    assert [(paths[i].name, r) for i, r in got.failed] == [
        ("dolphin.png", "decoding took longer than 1 s (stuck or hostile file)")]
    assert len(got.ok) == 9
    loader = _Images(paths, plain_transform(torch_model.preprocess), torch_model.preprocess.min_side, timeout=1.0)
    i, tensor, reason = loader[[p.name for p in paths].index("dolphin.png")]
    assert tensor is None and reason == "decoding took longer than 1 s (stuck or hostile file)"
    assert time.monotonic() - started < 25


def test_vanished_file_and_escaping_paths_and_hostile_checkpoint(tmp_path, model):
    import sqlite3

    import torch

    from imgembed.errors import ModelError
    from imgembed.inference.pool import embed_files
    from imgembed.model.network import load_model

    batch = next(embed_files(model, [tmp_path / "gone.png"], workers=0))
    assert batch.failed == [(0, "cannot read file: No such file or directory")]

    folder = copy_classes(tmp_path / "p", "fish")
    index = tmp_path / "idx"
    index_folder(folder, index, model, executor=LocalPool(workers=0))
    db = sqlite3.connect(index / "metadata.sqlite")
    with db:
        db.execute("UPDATE images SET path = '../../etc/passwd' WHERE id = 1")
    db.close()
    found = check_index(index)
    assert any("escapes its root" in p for p in found["problems"])
    repaired = check_index(index, repair=True)
    assert repaired["repaired"] and repaired["images"] == 9 and check_index(index)["problems"] == []

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"format": "imgembed-checkpoint", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="refused by weights-only loading.*(unsupported GLOBAL posix.system|Unsupported global)"):
        load_model(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()


def test_a_thousand_files_with_five_percent_bad(tmp_path, model):
    """A seeded folder of 1,000 files, about 5% broken: all good ones once, all bad ones named;
    a second run finds everything unchanged. (bench/many_files.py does the same with 10,000.)"""
    import sys

    sys.path.insert(0, str(SAMPLES.parent / "bench"))
    from many_files import make_folder

    folder, good, bad = make_folder(tmp_path / "many", 1000, seed=7)
    report = index_folder(folder, tmp_path / "idx", model, options=IndexOptions(batch_size=64))
    assert report.added == len(good) and {os.path.basename(p) for p, _ in report.skipped} == bad
    assert 30 <= len(bad) <= 70
    again = index_folder(folder, tmp_path / "idx", model)
    assert (again.added, again.updated, again.unchanged, len(again.skipped)) == (0, 0, len(good), len(bad))


def test_train_views_of_a_huge_image_within_the_pixel_cap(tmp_path, monkeypatch, torch_model):
    """An image within ``--max-pixels`` but far above PIL's own limit (a 16000 x 14464 clip-art
    PNG) must give `train` its augmented views: PIL checks every ``crop`` against its limit."""
    from imgembed.train.featcache import FeatureCache

    path = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (250, 250, 3), np.uint8)).resize((4000, 4000)).save(path)
    # the same situation, scaled down: any random crop of this image is over twice the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)
    got = FeatureCache(tmp_path / "cache", torch_model).features([path], 3, workers=0,
                                                                  max_pixels=100_000_000)
    assert got.failed == [] and got.features.shape[:2] == (1, 3)
    assert np.isfinite(got.features).all()
