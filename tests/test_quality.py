"""The embedding's choices (input fit, pooling), the closed forms and the blend head.

Quality numbers themselves come from bench/quality.py (docs/quality.md); these tests pin down
the behaviour users rely on: old indexes keep their way of seeing images, the closed forms are
the textbook ones, and a blend weight of 0 is the untrained embedding.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imgembed.api import LocalPool, Searcher, embed, index_folder
from imgembed.imaging.preprocess import Preprocess
from imgembed.model.network import load_model, pool
from imgembed.train import blend, closedform
from imgembed.train.featcache import plain_transform

from conftest import SAMPLES, run_cli, run_json

LEGACY = {"backbone": "efficientnet_lite0", "preprocess": {
    "resize": 256, "crop": 224, "mean": [127 / 255] * 3, "std": [128 / 255] * 3, "interpolation": "bicubic"}}


@pytest.fixture(scope="module")
def legacy_index(tmp_path_factory):
    """An index as every imgembed before the new default built it: centre crop, average pooling."""
    directory = tmp_path_factory.mktemp("legacy") / "index"
    model = load_model("efficientnet_lite0", like=LEGACY)
    index_folder(SAMPLES / "fruit", directory, model, executor=LocalPool(workers=0))
    return directory, model


def test_old_index_records_no_new_keys_and_is_searched_the_old_way(legacy_index, model):
    directory, legacy = legacy_index
    manifest = json.loads((directory / "manifest.json").read_text())
    assert "pooling" not in manifest["model"] and "fit" not in manifest["model"]["preprocess"]
    assert model.pooling != "avg" and model.identity != legacy.identity  # today's default differs
    with Searcher(directory) as s:
        assert s.model.pooling == "avg" and s.model.preprocess.fit == "crop"
        query = SAMPLES / "fruit" / "pear.png"
        top = s.search([query], k=1)[0].hits[0]
    assert top.row.path.endswith("pear.png") and top.score == pytest.approx(1.0, abs=1e-3)


def test_cli_reindexes_an_old_index_without_a_model_mismatch(legacy_index):
    directory, _ = legacy_index
    report = run_json("index", SAMPLES / "fruit", "--index", directory, "-q")
    assert report["unchanged"] == 10 and report["added"] == 0


def test_pooling_and_fit_are_part_of_the_identity(model):
    assert model.identity["pooling"] == "gem:2" and model.identity["preprocess"]["fit"] == "pad"
    x = torch.rand(2, 5, 3, 3)
    assert torch.allclose(pool(x, "gem:1"), pool(x, "avg"), atol=1e-6)
    assert torch.all(pool(x, "gem:3") >= pool(x, "avg") - 1e-6)  # power mean inequality


def test_pad_fit_keeps_the_whole_image_and_pads_with_zeros():
    pre = Preprocess(224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", "pad")
    wide = Image.new("RGB", (400, 100), (255, 0, 0))
    t = plain_transform(pre)(wide)
    assert t.shape == (3, 224, 224)
    assert torch.allclose(t[:, 0, :], torch.zeros(3, 224), atol=0.01)  # padding normalises to 0
    assert torch.allclose(t[0, 112, :], torch.ones(224), atol=0.01)  # the image spans the full width
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert "fit" not in Preprocess(256, 224, (0.5,) * 3, (0.5,) * 3).to_dict()


def _seeded(n=120, d=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, d)) * 2
    return centres[labels] + rng.normal(size=(n, d)), labels


def test_lda_solves_the_regularised_generalised_eigenproblem():
    x, y = _seeded()
    a = 0.3
    p = closedform.lda(x, y, shrinkage=a)
    mean = x.mean(0)
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    sw = sum(np.outer(v, v) for v in x - means[y]) / len(x)
    sw = (1 - a) * sw + a * np.trace(sw) / x.shape[1] * np.eye(x.shape[1])
    sb = sum((y == c).sum() / len(x) * np.outer(m - mean, m - mean) for c, m in enumerate(means))
    assert p.matrix.shape == (16, 3)
    for v in p.matrix.T:  # each axis satisfies Sb v = l Sw v
        lam = v @ sb @ v / (v @ sw @ v)
        assert np.allclose(sb @ v, lam * sw @ v, atol=1e-8 * max(1, lam))
    ref = np.sort(np.linalg.eigvals(np.linalg.solve(sw, sb)).real)[::-1][:3]
    got = [v @ sb @ v / (v @ sw @ v) for v in p.matrix.T]
    assert np.allclose(got, ref, rtol=1e-6)


def test_pca_whitening_decorrelates_the_fitted_data():
    x, _ = _seeded(n=400)
    p = closedform.pca_whitening(x, shrinkage=0.0)
    z = (x - p.mean) @ p.matrix
    assert np.allclose(np.cov(z.T), np.eye(z.shape[1]), atol=1e-6)


def test_blend_weight_zero_is_the_untrained_embedding_and_weight_sets_the_mix():
    torch.manual_seed(0)
    f = torch.rand(6, 32)
    u = torch.nn.functional.normalize(f, dim=1)
    assert torch.allclose(torch.nn.functional.normalize(blend.BlendHead(32, 4, 0.0)(f), dim=1)[:, :32], u)
    head = blend.BlendHead(32, 4, 2.0)
    e = torch.nn.functional.normalize(head(f), dim=1)
    p = head.projected(f)
    expected = (u @ u.T + 4 * p @ p.T) / 5
    assert torch.allclose(e @ e.T, expected, atol=1e-5)


def test_blend_head_with_taps_keeps_the_last_map_as_its_untrained_part():
    torch.manual_seed(0)
    parts = [32, 8, 16]
    f = torch.rand(6, sum(parts)) * torch.tensor([1.0] * 32 + [50.0] * 8 + [0.01] * 16)
    head = blend.BlendHead(32, 4, 1.0, parts)
    assert head.linear.in_features == 56
    e = head(f)
    assert torch.allclose(e[:, :32], torch.nn.functional.normalize(f[:, :32], dim=1))
    # each part weighs the same in the projection's input, whatever its scale
    z = blend.joined(f, parts)
    assert torch.allclose(z.norm(dim=1), torch.ones(6))
    assert torch.allclose(z[:, 32:40].norm(dim=1), z[:, 40:].norm(dim=1))


def test_default_training_beats_the_untrained_embedding_on_validation(tmp_path):
    from imgembed.train.loop import TrainConfig, train

    result = train(SAMPLES, tmp_path / "m.pt", TrainConfig(workers=0), cache_dir=tmp_path / "cache")
    # seed 0, 16 validation images: k-NN accuracy 0.94 -> 0.94, mAP@R 0.45 -> 0.89
    assert result.metrics["knn_accuracy"] >= result.baseline["knn_accuracy"]
    assert result.metrics["map_at_r"] > result.baseline["map_at_r"] + 0.05
    assert 0 < result.blend_weight and not result.kept_untrained
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["head"]["type"] == "blend" and ckpt["pooling"] == "gem:2"
    model = load_model(result.checkpoint)
    v = embed(model, [SAMPLES / "fruit" / "pear.png"])
    # the projection reads the last map (1280) and four mid-level taps (80 + 112 + 192 + 320)
    assert ckpt["head"]["taps"] == [8, 11, 15, 16] and ckpt["head"]["parts"] == [1280, 80, 112, 192, 320]
    assert v.shape == (1, 1280 + 1984) and ckpt["head"]["proj"] == 1984


def test_train_cli_says_which_embedding_it_kept(tmp_path):
    out = run_cli("train", SAMPLES, "--out", tmp_path / "m.pt", "--cache", tmp_path / "cache", "-q",
                  "--workers", "0").stdout
    assert "untrained:" in out and ("blend weight" in out or "untrained model" in out)


def test_wccn_whitens_the_within_class_scatter():
    x, y = _seeded(n=400)
    p = closedform.wccn(x, y, shrinkage=0.0)
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    sw = np.cov((x - means[y]).T, bias=True)
    assert np.allclose(p.matrix.T @ sw @ p.matrix, np.eye(16), atol=1e-8)  # M^T Sw M = I


def test_a_blend_checkpoint_from_before_the_taps_embeds_as_it_did(tmp_path):
    """A head config without ``taps`` (every checkpoint written before them) reads the last map
    alone: [u ; w * normalise(W u + b)], the formula those checkpoints were trained for."""
    from imgembed.model.network import EmbeddingModel, save_checkpoint

    base = load_model(inference=False)
    torch.manual_seed(0)
    old = EmbeddingModel(base.backbone_name, base.backbone, base.weights_id, base.preprocess,
                         {"type": "blend", "proj": 16, "weight": 2.0, "dim": base.feature_dim + 16},
                         pooling=base.pooling)
    save_checkpoint(old, tmp_path / "old.pt", weights="imagenet")
    model = load_model(str(tmp_path / "old.pt"), precision="fp32")
    assert model.taps == () and model.dim == 1296
    files = [SAMPLES / "fruit" / "pear.png", SAMPLES / "fruit" / "banana.png"]
    got = embed(model, files)
    f = torch.from_numpy(embed(load_model(precision="fp32"), files))  # the untrained u
    lin = model.head.linear
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            torch.cat([f, 2.0 * torch.nn.functional.normalize(lin(f), dim=1)], 1), dim=1).numpy()
    assert np.allclose(got, expected, atol=1e-4)
