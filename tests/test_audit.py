"""`imgembed audit`: mislabels, outliers, duplicates and leaks (imgembed.collection.audit,
imgembed.api.auditing, imgembed.cli.audit)."""

import json
import shutil

import numpy as np
import pytest
from conftest import CLASSES, SAMPLES, copy_classes, run_cli

from imgembed.collection import audit as scoring

# (class, file) moved into the wrong class folder
PLANTED = {("vehicles", "hummer_05.png"): "fruit", ("vehicles", "old_truck_indana_model__01.png"): "birds",
           ("fish", "clown_loach_01.png"): "flowers", ("vehicles", "bus_symbol_black_01.png"): "mammals"}
COPIED = ("clocks", "alarm_clock_gerald_g._02.png")  # an exact copy of it is filed under bugs/
LEAKED = ("birds", "hen_01.png")  # and a copy of this one lies under a second root


@pytest.fixture(scope="module")
def audited(tmp_path_factory, model):
    from imgembed.api import LocalPool, index_folder

    base = tmp_path_factory.mktemp("audit")
    root = copy_classes(base / "labelled", *CLASSES)
    for (cls, name), wrong in PLANTED.items():
        shutil.move(root / cls / name, root / wrong / name)
    shutil.copyfile(SAMPLES / COPIED[0] / COPIED[1], root / "bugs" / f"copy_{COPIED[1]}")
    second = base / "second" / LEAKED[0]
    second.mkdir(parents=True)
    shutil.copyfile(SAMPLES / LEAKED[0] / LEAKED[1], second / LEAKED[1])
    index_dir = base / "idx"
    index_folder(root, index_dir, model, executor=LocalPool(workers=0))
    index_folder(base / "second", index_dir, model, executor=LocalPool(workers=0))
    return root, base / "second", index_dir


def test_planted_mislabels_rank_first_with_the_right_suggestion(audited):
    from imgembed.api import audit

    root, _, index_dir = audited
    report = audit(index_dir)
    assert report.labelled and report.note is None
    mislabels = report.of_kind("mislabel")
    top = {f.path: f for f in mislabels[:len(PLANTED) + 2]}
    for (cls, name), wrong in PLANTED.items():
        path = str(root / wrong / name)
        assert path in top, f"{path} not among the top mislabels: {[f.path for f in mislabels[:8]]}"
        assert top[path].suggested == cls and top[path].label == wrong
        assert top[path].score > scoring.MISLABEL_THRESHOLD and top[path].neighbours


def test_copy_under_another_label_is_a_duplicate_and_a_second_root_a_leak(audited):
    from imgembed.api import audit

    root, second, index_dir = audited
    report = audit(index_dir, kinds=("duplicate", "leak"))
    pairs = {kind: [{f.path, f.other.path} for f in report.of_kind(kind)] for kind in ("duplicate", "leak")}
    copied = {str(root / COPIED[0] / COPIED[1]), str(root / "bugs" / f"copy_{COPIED[1]}")}
    leaked = {str(root / LEAKED[0] / LEAKED[1]), str(second / LEAKED[0] / LEAKED[1])}
    assert copied in pairs["duplicate"] and copied not in pairs["leak"]
    assert leaked in pairs["leak"] and leaked not in pairs["duplicate"]  # same label: not a duplicate


def test_json_schema_ranked_within_kind_and_html(audited, tmp_path):
    _, _, index_dir = audited
    page = tmp_path / "audit.html"
    proc = run_cli("audit", "--index", index_dir, "--json", "--html", page)
    findings = json.loads(proc.stdout)
    assert findings and all({"kind", "path", "label", "suggested", "score"} <= set(f) for f in findings)
    kinds = [f["kind"] for f in findings]
    assert kinds == sorted(kinds, key=scoring.KINDS.index)  # one block per kind
    for kind in set(kinds):
        scores = [f["score"] for f in findings if f["kind"] == kind]
        assert scores == sorted(scores, reverse=True)
    assert all((f["suggested"] is not None) == (f["kind"] == "mislabel") for f in findings)
    text = page.read_text()
    assert "data:image/jpeg;base64," in text and "mislabel" in text
    only = json.loads(run_cli("audit", "--index", index_dir, "--json", "--kind", "mislabel", "--all").stdout)
    assert {f["kind"] for f in only} == {"mislabel"} and len(only) == len(CLASSES) * 10 + 2  # every labelled image


def test_index_without_labels_lists_no_mislabels_and_says_why(tmp_path, model):
    from imgembed.api import LocalPool, audit, index_folder

    flat = tmp_path / "flat"
    flat.mkdir()
    for cls in CLASSES[:3]:
        for f in sorted((SAMPLES / cls).glob("*.png"))[:4]:
            shutil.copyfile(f, flat / f"{cls}_{f.name}")
    shutil.copyfile(SAMPLES / CLASSES[0] / sorted(p.name for p in (SAMPLES / CLASSES[0]).glob("*.png"))[0],
                    flat / "again.png")
    index_dir = tmp_path / "idx"
    index_folder(flat, index_dir, model, executor=LocalPool(workers=0))
    report = audit(index_dir)
    assert not report.labelled and not report.of_kind("mislabel")
    assert report.of_kind("duplicate") == []  # two unlabelled copies are not filed under two labels
    proc = run_cli("audit", "--index", index_dir, "--json", "--all")
    findings = json.loads(proc.stdout)
    assert proc.returncode == 0 and findings and "mislabel" not in {f["kind"] for f in findings}
    note = [line for line in proc.stderr.splitlines() if "mislabels need labels" in line]
    assert len(note) == 1 and "one sub-folder per class" in note[0]


# -- the scoring, on vectors small enough to check by hand -----------------------------------------

def _loo_by_refitting(x, codes, n_classes, alpha):
    """The leave-one-out ridge outputs computed the slow way: one fit per held-out image."""
    n, d = x.shape
    out = np.zeros((n, n_classes))
    for i in range(n):
        keep = np.arange(n) != i
        xb = np.hstack([x[keep], np.ones((n - 1, 1))])
        penalty = alpha * n / d * np.eye(d + 1)
        penalty[d, d] = 0
        w = np.linalg.solve(xb.T @ xb + penalty, xb.T @ np.eye(n_classes)[codes[keep]])
        out[i] = np.append(x[i], 1) @ w
    return out


def test_mislabel_score_is_the_leave_one_out_margin():
    rng = np.random.default_rng(0)
    centres = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], float)
    codes = np.repeat([0, 1, 2], 5)
    x = centres[codes] + 0.1 * rng.standard_normal((15, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    codes[3] = 2  # a class-0 image labelled 2
    score, suggested = scoring.mislabel_scores(x, codes, 3, alpha=0.3)
    loo = _loo_by_refitting(x, codes, 3, 0.3)  # the fit sees the 14 others: penalty 0.3 * 15 / 4 as in one fit
    own = loo[np.arange(15), codes]
    loo[np.arange(15), codes] = -np.inf
    assert np.allclose(score, loo.max(1) - own, atol=1e-6)
    assert np.array_equal(suggested, loo.argmax(1))
    assert score.argmax() == 3 and suggested[3] == 0 and score[3] > scoring.MISLABEL_THRESHOLD
    assert (np.delete(score, 3) < 0).all()


def test_unlabelled_images_and_a_single_label_score_nothing():
    x = np.eye(4)
    score, suggested = scoring.mislabel_scores(x, np.array([0, 0, 1, -1]), 2)
    assert np.isnan(score[3]) and suggested[3] == -1 and not np.isnan(score[:3]).any()
    score, _ = scoring.mislabel_scores(x, np.zeros(4, np.int64), 1)
    assert np.isnan(score).all()


def test_outlier_needs_to_be_far_from_the_collection_and_its_class():
    # robust z: median 2, MAD 1 -> (100 - 2) / 1.4826
    assert np.allclose(scoring.robust_z([0, 1, 2, 3, 100]), np.array([-2, -1, 0, 1, 98]) / 1.4826)
    rng = np.random.default_rng(1)
    a = np.array([1.0, 0, 0, 0]) + 0.05 * rng.standard_normal((8, 4))
    b = np.array([0, 1.0, 0, 0]) + 0.05 * rng.standard_normal((8, 4))
    odd = np.array([[0, 0, 0, 1.0]])
    x = np.vstack([a, b, odd, b[:1] + 0.01])  # image 17: a b-like image labelled a (a mislabel)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    codes = np.array([0] * 8 + [1] * 8 + [0, 0])
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nb = np.argsort(-sims, 1)[:, :3]
    graph = scoring.Graph(nb, np.take_along_axis(sims, nb, 1))
    score = scoring.outlier_scores(graph, x, codes)
    assert score.argmax() == 16 and score[16] > scoring.OUTLIER_THRESHOLD
    assert score[17] < scoring.OUTLIER_THRESHOLD  # far from its class, not from the collection


def test_pair_kinds_and_splits():
    labels = ["train/cat", "test/cat", "cat", "dog", None, "val/dog"]
    roots = ["/r", "/r", "/r", "/r", "/s", "/r"]
    relatives = ["train/cat/a.png", "test/cat/a.png", "cat/b.png", "dog/b.png", "c.png", "val/dog/a.png"]
    pairs = np.array([[0, 1], [2, 3], [2, 4], [0, 5], [2, 0]])
    duplicate, leak = scoring.pair_kinds(pairs, labels, roots, relatives)
    assert duplicate.tolist() == [False, True, False, True, False]
    assert leak.tolist() == [True, False, True, True, False]
    assert scoring.class_of("Train/cat/small") == "cat/small" and scoring.class_of("test") is None
    assert scoring.split_of("validation/x/y.png") == "validation" and scoring.split_of("x/train.png") is None
