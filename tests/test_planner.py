"""The sync planner (imgembed.index.planner), directly: no model, no image decoded, no database.

Each test states a folder as it was indexed (stored rows) and as a walk finds it now, and checks
the plan. Hashes come from a dict, so a test shows which files the planner had to read.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgembed.errors import RemovalRefusedError
from imgembed.index import planner
from imgembed.index.planner import FileStat, Move, Touch
from imgembed.index.store import ImageRow, Known, Skipped

ROOT = "/photos"


def row(id_, rel, size=100, mtime=1, digest=None):
    return ImageRow(id_, ROOT, rel, planner.label_of(rel), size, mtime, digest or f"h-{rel}", 8, 8)


def stat(rel, size=100, mtime=1):
    return FileStat(Path(ROOT) / rel, rel, size, mtime)


class Hashes:
    """Content hashes by relative path (a fresh one for any other file); records which files
    were read."""

    def __init__(self, by_rel=None):
        self.by_rel = by_rel or {}
        self.read: list[str] = []

    def __call__(self, f: FileStat):
        self.read.append(f.relative)
        return self.by_rel.get(f.relative, f"fresh-{f.relative}")


def make_plan(files, rows, hashes=None, **kw):
    return planner.plan(ROOT, files, {r.path: r for r in rows}, kw.pop("bad", {}), hash_of=hashes or Hashes(), **kw)


def test_unchanged_files_are_never_read():
    hashes = Hashes()
    p = make_plan([stat("a/1.jpg"), stat("a/2.jpg")], [row(1, "a/1.jpg"), row(2, "a/2.jpg")], hashes)
    assert p.unchanged == 2 and not p.todo and not p.gone and hashes.read == []


def test_new_and_changed_files_are_embedded_and_a_changed_one_replaces_its_row():
    p = make_plan([stat("a/1.jpg", size=200), stat("a/new.jpg")], [row(1, "a/1.jpg")])
    assert [f.relative for f in p.todo] == ["a/1.jpg", "a/new.jpg"]
    assert p.replaces == {"a/1.jpg": 1}


def test_a_touched_file_keeps_its_vector():
    # Same size, new mtime, same bytes: only its mtime is updated.
    p = make_plan([stat("a/1.jpg", mtime=5)], [row(1, "a/1.jpg")], Hashes({"a/1.jpg": "h-a/1.jpg"}))
    assert p.touches == [Touch(1, 5)] and not p.todo and not p.replaces


def test_a_moved_file_keeps_its_vector_and_takes_its_new_folders_label():
    hashes = Hashes({"b/renamed.jpg": "h-a/1.jpg"})
    p = make_plan([stat("b/renamed.jpg", mtime=7)], [row(1, "a/1.jpg")], hashes)
    assert p.moves == [Move(1, "b/renamed.jpg", "b", 7)]
    assert not p.todo and not p.gone  # the row moved: it did not vanish


def test_only_files_of_a_vanished_size_are_read_to_find_moves():
    hashes = Hashes()
    p = make_plan([stat("new.jpg", size=999)], [row(1, "a/1.jpg", size=100)], hashes)
    assert hashes.read == [] and [f.relative for f in p.todo] == ["new.jpg"] and p.gone == [1]


def test_vanished_rows_are_listed_unless_pruning_is_off():
    rows = [row(1, "a/1.jpg"), row(2, "a/2.jpg")]
    assert make_plan([stat("a/1.jpg")], rows).gone == [2]
    assert make_plan([stat("a/1.jpg")], rows, prune=False).gone == []


def test_restored_bytes_get_the_known_vector_and_a_second_copy_shares_it():
    vector = np.ones(4, np.float32)
    tomb = Known(tombstone=7, width=8, height=8, phash=None, vector=vector)
    asked = []

    def known(digest, size):
        asked.append((digest, size))
        return tomb if digest == "old" else None

    hashes = Hashes({"back.jpg": "old", "copy.jpg": "old"})
    p = make_plan([stat("back.jpg"), stat("copy.jpg"), stat("other.jpg", size=5)], [], hashes,
                  known=known, stored_sizes=lambda: {100})
    assert [(r.file.relative, r.digest, r.known.tombstone) for r in p.restores] == [
        ("back.jpg", "old", 7), ("copy.jpg", "old", None)]  # the tombstone is taken once
    assert [f.relative for f in p.todo] == ["other.jpg"]
    assert asked == [("old", 100)] and "other.jpg" not in hashes.read  # no stored content of size 5


def test_stored_sizes_are_not_asked_for_when_nothing_needs_embedding():
    def sizes():
        raise AssertionError("asked")

    p = make_plan([stat("a/1.jpg")], [row(1, "a/1.jpg")], stored_sizes=sizes)
    assert p.unchanged == 1


def test_known_failures_wait_until_their_file_changes():
    bad = {"bad.jpg": Skipped(ROOT, "bad.jpg", "empty file", 0, 1), "gone.jpg": Skipped(ROOT, "gone.jpg", "x", 0, 1)}
    p = make_plan([stat("bad.jpg", size=0)], [], bad=bad)
    assert p.still_bad == [bad["bad.jpg"]] and not p.todo and p.vanished_bad == ["gone.jpg"]
    p = make_plan([stat("bad.jpg", size=50)], [], bad=bad)
    assert [f.relative for f in p.todo] == ["bad.jpg"]


def test_a_file_that_cannot_be_stated_is_skipped_with_its_reason():
    p = make_plan([FileStat(Path(ROOT) / "x.jpg", "x.jpg", error="cannot stat file: Permission denied")],
                  [row(1, "x.jpg")])
    assert p.unstatable == [Skipped(ROOT, "x.jpg", "cannot stat file: Permission denied", 0, 0)]
    assert p.gone == []  # seen, so not vanished


@pytest.mark.parametrize("present, indexed, refused", [
    (0, 3, True),       # every row of a small root: an empty folder
    (0, 80, True),
    (30, 80, True),     # 50 of 80 gone: more than half and at least 50
    (31, 80, False),    # 49 gone: more than half, but fewer than 50
    (40, 80, False),    # half gone: not more than half
    (1, 10, False),     # most of a small folder: an ordinary deletion
    (79, 80, False),
])
def test_the_removal_guard(present, indexed, refused):
    rows = [row(i, f"{i}.jpg", size=10 + i) for i in range(indexed)]
    p = make_plan([stat(f"{i}.jpg", size=10 + i) for i in range(present)], rows)
    if refused:
        with pytest.raises(RemovalRefusedError, match=r"refusing to remove .* pass --allow-removal"):
            planner.check_removals(ROOT, p)
    else:
        planner.check_removals(ROOT, p)


def test_scan_stats_the_images_of_a_real_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.png").write_bytes(b"12345")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    found = list(planner.scan(tmp_path))
    assert [(f.relative, f.size, f.error) for f in found] == [("cats/a.png", 5, None)]


def test_the_storage_package_needs_no_torch():
    code = ("import sys; import imgembed.index, imgembed.index.planner, imgembed.index.backends, "
            "imgembed.index.recall, imgembed.index.lock\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "no torch"
