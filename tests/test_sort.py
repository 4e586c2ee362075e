"""Sorting an inbox into labelled folders (imgembed.collection.sorting, api.plan_sort/sort_inbox,
`imgembed sort`, `imgembed undo`) on real drawings: five sample classes, the first four of each
labelled, the rest in a flat inbox."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from imgembed import api
from imgembed.api import sorting as product
from imgembed.collection import sorting, tidy
from imgembed.config import SORT_MIN_CONFIDENCE
from imgembed.errors import InputError, NoLabelsError
from imgembed.index import ImageIndex

from conftest import SAMPLES, run_cli, run_json

CLASSES = ["birds", "clocks", "fruit", "vehicles", "fish"]


def snapshot(*folders):
    """Every file under the folders: relative path -> sha256 of its bytes."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[f"{folder.name}/{p.relative_to(folder)}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def collection(tmp_path, model):
    """(root, inbox, index, truth): root/<class>/ with 4 drawings each, indexed; the inbox holds the
    other drawings of those classes under names that do not say their class, and one corrupt file."""
    root, inbox = tmp_path / "root", tmp_path / "inbox"
    truth = {}
    for c in CLASSES:
        files = sorted((SAMPLES / c).glob("*.png"))
        (root / c).mkdir(parents=True)
        for f in files[:4]:
            shutil.copy(f, root / c / f.name)
        for n, f in enumerate(files[4:]):
            inbox.mkdir(exist_ok=True)
            name = f"img_{hashlib.md5(f.name.encode()).hexdigest()[:8]}.png"
            shutil.copy(f, inbox / name)
            truth[name] = c
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    index = tmp_path / "index"
    api.index_folder(root, index, model, executor=api.LocalPool(workers=0))
    return root, inbox, index, truth


def test_dry_run_changes_nothing_and_proposes_for_every_readable_image(collection):
    root, inbox, index, truth = collection
    before = snapshot(root, inbox)
    with ImageIndex.open(index) as idx:
        rows_before = len(idx)
    proc = run_cli("sort", inbox, "--into", root, "--index", index, "--dry-run", "--json", "-q")
    proposals = json.loads(proc.stdout)
    assert snapshot(root, inbox) == before
    with ImageIndex.open(index) as idx:
        assert len(idx) == rows_before
    assert sorted(p["path"].rsplit("/", 1)[1] for p in proposals) == sorted(truth)
    assert all({"path", "label", "confidence"} <= set(p) for p in proposals)
    assert all(p["label"] in CLASSES + [None] and 0 <= p["confidence"] <= 1 for p in proposals)
    confident = [p for p in proposals if p["label"]]
    assert confident and all(p["confidence"] >= SORT_MIN_CONFIDENCE for p in confident)
    assert all(p["confidence"] < SORT_MIN_CONFIDENCE for p in proposals if not p["label"])
    # most of what it proposes is right on these drawings
    assert sum(truth[p["path"].rsplit("/", 1)[1]] == p["label"] for p in confident) >= 0.7 * len(confident)
    assert "broken.png" in proc.stderr and "skipped" in proc.stderr


def test_a_run_moves_exactly_what_it_proposed_and_undo_restores_both_folders(collection):
    root, inbox, index, _truth = collection
    before = snapshot(root, inbox)
    proposed = run_json("sort", inbox, "--into", root, "--index", index, "--dry-run", "-q")
    done = run_json("sort", inbox, "--into", root, "--index", index, "--yes", "-q")
    moving = {p["path"]: p["to"] for p in proposed if p["label"]}
    assert {p["path"]: p["to"] for p in done if p["label"]} == moving
    for src, dst in moving.items():
        assert not os.path.exists(src)
        assert dst.startswith(str(root)) and os.path.isfile(dst)
    staying = [p["path"] for p in proposed if not p["label"]]
    assert all(os.path.isfile(p) for p in staying)
    # the moved images are in the index under their new labels, with the vectors they were sorted by
    with ImageIndex.open(index) as idx:
        rows = {r.full_path: r for r in idx.store.rows_under(str(root.resolve())).values()}
    for src, dst in moving.items():
        assert rows[dst].label == dst.rsplit("/", 2)[1]
    assert run_json("search", next(iter(moving.values())), "--index", index, "-k", "1")[0]["results"][0]["score"] > 0.999
    run_cli("undo", "--index", index)
    assert snapshot(root, inbox) == before
    with ImageIndex.open(index) as idx:
        assert not any(dst in {r.full_path for r in idx.store.rows_under(str(root.resolve())).values()}
                       for dst in moving.values())


def test_without_a_terminal_it_asks_for_yes_and_moves_nothing(collection):
    root, inbox, index, _ = collection
    before = snapshot(root, inbox)
    proc = run_cli("sort", inbox, "--into", root, "--index", index, "-q", check=False)
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert snapshot(root, inbox) == before


def test_a_folder_the_index_does_not_cover_is_refused_naming_both(collection, tmp_path):
    _root, inbox, index, _ = collection
    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = run_cli("sort", inbox, "--into", other, "--index", index, "--dry-run", check=False)
    assert proc.returncode == 1
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and str(other) in message and str(index) in message


def test_a_name_taken_in_the_target_folder_is_never_overwritten(collection):
    root, inbox, index, _truth = collection
    plan = api.plan_sort(inbox, root, index, min_confidence=0.0)
    victim = plan.moving[0]
    target = root / victim.label / victim.path.rsplit("/", 1)[1]
    target.write_bytes(b"already here")  # taken after the plan: the move is refused, the file kept
    report = api.sort_inbox(plan)
    assert target.read_bytes() == b"already here"
    assert [a.src for a, _ in report.failed] == [victim.path] and os.path.isfile(victim.path)
    assert len(report.done) == len(plan.moving) - 1
    api.undo_duplicate_actions(index)
    # taken before the plan: the proposal renames it
    plan = api.plan_sort(inbox, root, index, min_confidence=0.0)
    clash = next(p for p in plan.moving if p.path == victim.path)
    assert clash.to != str(target) and clash.to.endswith("-2.png")


def test_nothing_moves_before_its_journal_entry_is_on_disk(collection, monkeypatch):
    root, inbox, index, _ = collection
    plan = api.plan_sort(inbox, root, index, min_confidence=0.0)
    seen = []
    real = tidy.perform

    def perform(action):
        journal = max((index / api.JOURNALS).glob("*.jsonl"))
        seen.append(action.src in journal.read_text())
        real(action)

    monkeypatch.setattr(tidy, "perform", perform)
    report = api.sort_inbox(plan)
    assert seen and all(seen) and len(report.done) == len(plan.moving)


def test_a_file_changed_since_the_plan_stays(collection):
    root, inbox, index, _ = collection
    plan = api.plan_sort(inbox, root, index, min_confidence=0.0)
    changed = plan.moving[0].path
    with open(changed, "ab") as f:
        f.write(b"\0")
    report = api.sort_inbox(plan)
    assert [a.src for a, _ in report.failed] == [changed]
    assert "changed since" in report.failed[0][1]


def test_an_index_without_labels_under_the_root_says_so(tmp_path, model):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted((SAMPLES / "fruit").glob("*.png"))[:3]:
        shutil.copy(f, flat / f.name)
    index = tmp_path / "index"
    api.index_folder(flat, index, model, executor=api.LocalPool(workers=0))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with pytest.raises(NoLabelsError, match="sub-folder per label"):
        api.plan_sort(inbox, flat, index)


def test_the_inbox_is_embedded_once(collection, monkeypatch):
    root, inbox, index, _ = collection
    api.plan_sort(inbox, root, index)
    calls = []
    real = product.index_folder
    monkeypatch.setattr(product, "index_folder", lambda *a, **kw: calls.append(real(*a, **kw)) or calls[-1])
    api.plan_sort(inbox, root, index)
    assert calls and calls[0].embedded == 0


def test_label_spreading_follows_the_inbox_own_structure():
    """Four classes whose labelled examples sit in one style, and an inbox shifted by another:
    the per-image vote follows the shift; the shift taken out and labels spread over the joint
    graph recover most of the inbox."""
    rng = np.random.default_rng(0)
    d, classes = 32, 4
    centres = rng.normal(size=(classes, d))
    style = 3.0 * rng.normal(size=d)

    def draw(n, shift):
        y = np.arange(n) % classes
        x = centres[y] + 1.5 * rng.normal(size=(n, d)) + shift
        return x / np.linalg.norm(x, axis=1, keepdims=True), y

    labelled, codes = draw(40, 0.0)
    inbox, truth = draw(200, style)
    vote = sorting.nearest(labelled, codes, classes, inbox, 5)
    spread = sorting.propose(labelled, codes, classes, inbox)
    assert (spread.best == truth).mean() >= (vote.best == truth).mean() + 0.15
    assert np.all((spread.confidence >= 1 / classes - 1e-9) & (spread.confidence <= 1 + 1e-9))


def test_bad_thresholds_and_folders_are_input_errors(collection, tmp_path):
    root, inbox, index, _ = collection
    with pytest.raises(InputError, match="min-confidence"):
        api.plan_sort(inbox, root, index, min_confidence=1.5)
    with pytest.raises(InputError, match="not a folder"):
        api.plan_sort(tmp_path / "nowhere", root, index)
