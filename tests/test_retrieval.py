"""Retrieval quality of the pretrained embedding on the bundled sample images."""

import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from imgembed.api import Searcher, embed
from imgembed.collection import knn
from imgembed.imaging.decode import read_image


def alterations(img: Image.Image, rng: random.Random) -> dict[str, Image.Image]:
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.75, 0.85)), int(h * rng.uniform(0.75, 0.85))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + 20) % 256
    return {
        "crop": img.crop((x, y, x + cw, y + ch)),
        "rotation": img.rotate(rng.choice([-15, 15]), resample=Image.BICUBIC, expand=True, fillcolor="white"),
        "colour": ImageEnhance.Brightness(Image.fromarray(hsv, "HSV").convert("RGB")).enhance(0.85),
        "blur": img.filter(ImageFilter.GaussianBlur(2)),
        "rescale": img.resize((max(1, w * 2 // 5), max(1, h * 2 // 5)), Image.BILINEAR),
    }


def test_altered_copies_find_their_original(model, sample_index, sample_files):
    rng = random.Random(0)
    queries, truth, kinds = [], [], []
    for path in sample_files:
        for kind, altered in alterations(read_image(path).image, rng).items():
            queries.append(altered)
            truth.append(str(path))
            kinds.append(kind)
    with Searcher(sample_index, model) as searcher:
        results = searcher.search(queries, k=1)
    hits = np.array([r.hits[0].row.full_path == t for r, t in zip(results, truth)])
    per_kind = {k: hits[[i for i, kk in enumerate(kinds) if kk == k]].mean() for k in set(kinds)}
    # Measured: 0.973 of 400 queries; crop 0.96, rotation 0.975, colour 0.99, blur 0.96, rescale 0.975.
    assert hits.mean() >= 0.90, per_kind
    assert min(per_kind.values()) >= 0.85, per_kind


def test_leave_one_out_knn_accuracy(model, sample_files):
    vectors = embed(model, sample_files)
    labels = [p.parent.name for p in sample_files]
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    correct = 0
    for i in range(len(labels)):
        nearest = np.argsort(-sims[i])[:5]
        correct += knn.vote([labels[j] for j in nearest], sims[i, nearest]).label == labels[i]
    accuracy = correct / len(labels)
    # Measured 0.613 (49/80) with the offline EfficientNet-Lite0 (chance: 0.125 over 8 classes).
    assert accuracy >= 0.55


def test_vote_weights_by_similarity_and_ignores_unlabelled():
    v = knn.vote(["cat", "dog", "dog", None], [0.9, 0.3, 0.3, 0.99])
    assert v.label == "cat" and v.votes == {"cat": 1, "dog": 2}
    assert v.confidence == pytest.approx(0.9 / 1.5)
    assert knn.vote([None, None], [0.5, 0.4]).label is None
    tie = knn.vote(["a", "b", "b"], [0.5, 0.25, 0.25])
    assert tie.label == "b"  # equal weight: more votes wins
    assert knn.vote(["a", "b"], [-0.2, -0.1]).label == "a"  # all weights zero: first rank wins


def test_a_combined_query_ranks_by_mean_similarity_minus_the_counter_examples():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    pos, neg = base[:3], base[3:5]
    q = knn.combine(pos, neg, 0.5)
    assert q.shape == (16,) and np.linalg.norm(q) == pytest.approx(1, abs=1e-6)
    # the ranking by cosine with q is the ranking by the documented score, done by hand
    by_hand = [float(np.mean([x @ p for p in pos]) - 0.5 * np.mean([x @ n for n in neg])) for x in base]
    assert list(np.argsort(-(base @ q), kind="stable")) == list(np.argsort(-np.array(by_hand), kind="stable"))
    np.testing.assert_allclose(knn.combine(pos), pos.mean(0) / np.linalg.norm(pos.mean(0)), rtol=1e-6)
    with pytest.raises(ValueError):
        knn.combine(np.zeros((0, 16)))


def test_search_not_in_the_cli_leaves_the_examples_out(sample_index):
    from imgembed.index import ImageIndex

    from conftest import SAMPLES, run_json

    a, b = SAMPLES / "vehicles" / "hummer_01.png", SAMPLES / "vehicles" / "hummer_02.png"
    c = SAMPLES / "vehicles" / "blazer_01.png"
    [pushed] = run_json("search", a, b, "--not", c, "--index", sample_index, "-k", "10")
    assert pushed["query"] == f"{a} + {b} - {c}"
    paths = [r["path"] for r in pushed["results"]]
    # the documented score at the default weight, by hand from the stored vectors (the examples are indexed)
    with ImageIndex.open(sample_index) as idx:
        rows = idx.store.rows_by_id(idx.store.ids())
        vecs = idx.store.vectors_by_id(list(rows))
    by_path = {rows[i].full_path: v for i, v in vecs.items()}
    va, vb, vc = by_path[str(a)], by_path[str(b)], by_path[str(c)]
    score = {p: (v @ va + v @ vb) / 2 - knn.NEGATIVE_WEIGHT * (v @ vc) for p, v in by_path.items() if p not in {str(a), str(b), str(c)}}
    assert paths == sorted(score, key=lambda p: -score[p])[:10]
