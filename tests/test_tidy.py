"""Acting on duplicates (imgembed.collection.tidy, api.act_on_duplicates, `imgembed duplicates --trash|--move-to|--link`,
`imgembed undo`) on a folder of real drawings with planted exact and near copies."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgembed import api
from imgembed.collection import tidy
from imgembed.errors import InputError
from imgembed.imaging.decode import to_rgb
from imgembed.index import ImageIndex

from conftest import copy_classes, run_cli, run_json


@pytest.fixture
def planted(tmp_path, model):
    """Two classes of sample drawings; an exact copy of one in another folder, a second exact copy,
    and a half-size JPEG of another (a near copy). Indexed."""
    folder = copy_classes(tmp_path / "photos", "fruit", "clocks")
    (folder / "inbox").mkdir()
    pear = folder / "fruit" / "pear.png"
    shutil.copy(pear, folder / "inbox" / "pear.png")
    shutil.copy(pear, folder / "inbox" / "pear again.png")
    os.utime(pear, ns=(1_000_000_000, 1_000_000_000))  # the oldest of the three
    big = to_rgb(Image.open(folder / "fruit" / "banana.png"))  # transparency on white, as a user's export
    big.resize((big.width // 2, big.height // 2)).save(folder / "inbox" / "banana_small.jpg", quality=60)
    index = tmp_path / "index"
    api.index_folder(folder, index, model, executor=api.LocalPool(workers=0))
    return folder, index


def rows_and_vectors(index):
    with ImageIndex.open(index) as idx:
        ids = idx.store.ids()
        rows = idx.store.rows_by_id(ids)
        vecs = idx.store.vectors_by_id(ids)
        return {r.full_path: (r, vecs[i]) for i, r in rows.items()}


def test_exact_copies_come_from_the_index_alone_without_a_model(planted):
    folder, index = planted
    groups = api.exact_duplicates(index)
    assert [sorted(os.path.relpath(r.full_path, folder) for r in g.rows) for g in groups] == [
        ["fruit/pear.png", "inbox/pear again.png", "inbox/pear.png"]]
    assert groups[0].exact
    probe = ("import sys; from imgembed.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('LOADED' if {'torch', 'onnxruntime'} & set(sys.modules) else 'CLEAN')")
    out = subprocess.run([sys.executable, "-c", probe, "duplicates", "--exact", "--index", str(index)],
                         capture_output=True, text=True, check=True).stdout
    assert "3 images with the same bytes" in out and out.strip().splitlines()[-1] == "CLEAN"


def member(id_, path, w=10, h=10, size=100, mtime=5):
    return tidy.Member(id_, "/r", path, w, h, size, mtime, "h")


def test_the_keep_policy():
    a, b, c = member(1, "a.jpg", 100, 100), member(2, "b.jpg", 200, 100), member(3, "x/c.jpg", 200, 100, size=900)
    assert tidy.choose_keeper([a, b, c]).id == 3  # most pixels, then the largest file
    assert tidy.choose_keeper([a, b]).id == 2
    old, new = member(1, "n.jpg", mtime=1), member(2, "m.jpg", mtime=9)
    assert tidy.choose_keeper([new, old]).id == 1
    assert tidy.choose_keeper([new, old], keep=["newest"]).id == 2
    assert tidy.choose_keeper([a, b, c], prefer=["/r/x"]).id == 3
    assert tidy.choose_keeper([a, b, c], keep=["size"], prefer=["/nowhere", "/r"]).id == 3
    with pytest.raises(InputError, match="not one of resolution"):
        tidy.choose_keeper([a], keep=["prettiest"])


def test_trash_then_undo(planted):
    folder, index = planted
    before = rows_and_vectors(index)
    groups = api.exact_duplicates(index)
    dry = api.act_on_duplicates(index, groups, "trash", dry_run=True)
    assert dry.planned[0][0] == str(folder / "fruit" / "pear.png") and not dry.done
    assert (folder / "inbox" / "pear.png").exists()  # a dry run changes nothing

    report = api.act_on_duplicates(index, groups, "trash")
    assert sorted(os.path.relpath(a.src, folder) for a in report.done) == ["inbox/pear again.png", "inbox/pear.png"]
    assert (folder / ".imgembed-trash" / "inbox" / "pear.png").is_file()  # moved, not deleted
    assert not (folder / "inbox" / "pear.png").exists() and (folder / "fruit" / "pear.png").is_file()
    after = rows_and_vectors(index)
    assert len(after) == len(before) - 2 and str(folder / "inbox" / "pear.png") not in after
    # the trash is hidden: a later index run does not bring the files back
    assert api.index_folder(folder, index).embedded == 0 and len(rows_and_vectors(index)) == len(before) - 2

    undone = api.undo_duplicate_actions(index)
    assert len(undone.done) == 2 and not undone.failed
    assert (folder / "inbox" / "pear.png").is_file() and not (folder / ".imgembed-trash").exists()
    restored = rows_and_vectors(index)
    assert set(restored) == set(before)
    for path, (row, vec) in before.items():
        np.testing.assert_array_equal(restored[path][1], vec)  # the vectors came back, not re-embedded
    report = api.index_folder(folder, index)
    assert report.unchanged == len(before) and report.embedded == 0
    with pytest.raises(InputError, match="no action to undo"):
        api.undo_duplicate_actions(index)
    with pytest.raises(InputError, match="records actions on the index"):
        api.undo_duplicate_actions(folder.parent / "another", undone.journal)


def test_move_keeps_relative_paths_and_vectors(planted, tmp_path):
    folder, index = planted
    before = rows_and_vectors(index)
    target = tmp_path / "dupes"
    report = api.act_on_duplicates(index, api.exact_duplicates(index), "move", move_to=target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.png")) == [
        "inbox/pear again.png", "inbox/pear.png"]
    after = rows_and_vectors(index)
    moved = after[str(target / "inbox" / "pear.png")]
    np.testing.assert_array_equal(moved[1], before[str(folder / "inbox" / "pear.png")][1])
    assert moved[0].root == str(target) and moved[0].label == "inbox" and len(after) == len(before)
    assert api.index_folder(folder, index).embedded == 0  # nothing to embed, nothing re-added
    assert len(rows_and_vectors(index)) == len(before)
    assert len(api.undo_duplicate_actions(index).done) == len(report.done) == 2
    assert set(rows_and_vectors(index)) == set(before) and not list(target.rglob("*.png"))


def test_link_replaces_exact_copies_only_and_undo_separates_them(planted):
    folder, index = planted
    keep, copy = folder / "fruit" / "pear.png", folder / "inbox" / "pear.png"
    mtime = copy.stat().st_mtime_ns
    with pytest.raises(InputError, match="--link .* near-duplicates"):
        api.act_on_duplicates(index, api.find_duplicates(index), "link")
    api.act_on_duplicates(index, api.exact_duplicates(index), "link")
    assert os.path.samefile(keep, copy) and keep.stat().st_nlink == 3
    assert api.index_folder(folder, index).embedded == 0
    api.undo_duplicate_actions(index)
    assert not os.path.samefile(keep, copy) and copy.read_bytes() == keep.read_bytes()
    assert copy.stat().st_mtime_ns == mtime and keep.stat().st_nlink == 1


def test_the_last_copy_and_changed_files_are_never_touched(planted):
    folder, index = planted
    groups = api.exact_duplicates(index)
    keeper = folder / "fruit" / "pear.png"
    shutil.move(keeper, folder / "elsewhere.png")  # the kept copy vanishes after indexing
    (folder / "inbox" / "pear again.png").write_bytes(b"edited since")
    report = api.act_on_duplicates(index, groups, "trash")
    assert not report.done
    reasons = sorted(r for _, r in report.failed)
    assert any("changed since it was indexed" in r for r in reasons)
    assert any("kept copy" in r and "missing" in r for r in reasons)
    assert (folder / "inbox" / "pear.png").is_file() and (folder / "inbox" / "pear again.png").is_file()


def test_files_outside_the_index_roots_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.png").write_bytes(b"x")
    (outside / "b.png").write_bytes(b"x")
    st = (outside / "a.png").stat()
    action = tidy.Action("trash", str(outside / "a.png"), str(outside / tidy.TRASH / "a.png"), str(outside / "b.png"),
                         1, str(outside), "a.png", st.st_size, st.st_mtime_ns, "h")
    with pytest.raises(tidy.ActionError, match="outside the index's folders"):
        tidy.check(action, roots=[str(tmp_path / "photos")])
    link = outside / "c.png"
    link.symlink_to(outside / "a.png")
    with pytest.raises(tidy.ActionError, match="not a regular file"):
        tidy.check(tidy.Action("trash", str(link), str(outside / "t" / "c.png"), str(outside / "b.png"), 1,
                               str(outside), "c.png", st.st_size, st.st_mtime_ns, "h"), roots=[str(outside)])


def test_an_action_interrupted_before_its_done_line_is_undone(planted):
    folder, index = planted
    [(keeper, actions)] = tidy.plan([([tidy.Member.of(r) for r in api.exact_duplicates(index)[0].rows], True)], "trash")
    journal = tidy.Journal.create(index / api.JOURNALS, {"index": str(index), "op": "trash"})
    journal.announce(actions[0])
    tidy.perform(actions[0])  # then the process dies: no "done" line, the index not told
    journal.announce(actions[1])  # announced, never performed
    journal.close()
    report = api.undo_duplicate_actions(index, journal.path)
    assert [a.src for a in report.done] == [actions[0].src]
    assert os.path.isfile(actions[0].src) and os.path.isfile(actions[1].src)


def test_cli_asks_before_acting_and_undoes(planted):
    folder, index = planted
    refused = run_cli("duplicates", "--exact", "--trash", "--index", index, check=False)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert (folder / "inbox" / "pear.png").is_file()
    plan = run_json("duplicates", "--exact", "--trash", "--dry-run", "--index", index)
    assert plan["dry_run"] and len(plan["groups"][0]["actions"]) == 2 and not plan["done"]
    done = run_cli("duplicates", "--exact", "--trash", "--yes", "--index", index)
    assert "2 files trashed" in done.stdout and "imgembed undo" in done.stdout
    assert "2 actions undone" in run_cli("undo", "--index", index).stdout
    assert (folder / "inbox" / "pear.png").is_file()


def test_near_copies_keep_the_larger_image(planted):
    folder, index = planted
    groups = [g for g in api.find_duplicates(index) if any(r.path == "inbox/banana_small.jpg" for r in g.rows)]
    assert len(groups) == 1 and not groups[0].exact
    report = api.act_on_duplicates(index, groups, "trash")
    assert [a.src for a in report.done] == [str(folder / "inbox" / "banana_small.jpg")]
    assert report.planned[0][0] == str(folder / "fruit" / "banana.png")  # twice the resolution
    assert (folder / tidy.TRASH / "inbox" / "banana_small.jpg").is_file()
    api.undo_duplicate_actions(index)
    assert (folder / "inbox" / "banana_small.jpg").is_file()


def test_two_runs_in_one_second_get_journals_of_their_own(tmp_path):
    """The web app acts twice within a second in one process: each run has its own journal."""
    first = tidy.Journal.create(tmp_path, {"op": "trash"})
    second = tidy.Journal.create(tmp_path, {"op": "move"})
    try:
        assert first.path != second.path and first.path.is_file() and second.path.is_file()
        assert tidy.read_journal(second.path)[0]["op"] == "move"
    finally:
        first.close()
        second.close()
