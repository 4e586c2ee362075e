"""The ONNX Runtime path gives the torch path's vectors, loads without torch once exported, and
survives a damaged or unwritable cache."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from imgembed.api import IndexOptions, LocalPool, Searcher, embed, index_folder, load_model
from imgembed.errors import RuntimeUnavailableError
from imgembed.imaging.preprocess import Preprocess
from imgembed.inference import runtime
from imgembed.train.featcache import plain_transform

from conftest import QUERIES, ROOT, SAMPLES, run_json


def _photos():
    names = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "hubble_deep_field")
    return [Image.fromarray(getattr(skdata, n)()) for n in names]


def _agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    top = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1:k + 1]  # noqa: E731 - neighbours, self excluded
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top(a), top(b))]))


def test_numpy_preprocessing_is_torchvisions_bit_for_bit(sample_files):
    """The inference path's PIL + numpy transform equals the torchvision one that training and
    every existing index used, for each fit, both filters, and images smaller than the crop."""
    images = [Image.open(p).convert("RGB") for p in sample_files[::6]] + _photos()[:3]
    images += [images[0].resize((30, 50)), images[1].resize((300, 17))]
    for fit, resize in (("crop", 256), ("whole", 224), ("pad", 224)):
        for interpolation in ("bilinear", "bicubic"):
            pre = Preprocess(resize, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation, fit)
            transform = plain_transform(pre)
            for image in images:
                np.testing.assert_array_equal(pre.to_array(image), transform(image).numpy(), err_msg=f"{fit} {image.size}")


@pytest.mark.parametrize("runtime_name", ["onnx", "openvino"])
@pytest.mark.parametrize("kind", ["default", "legacy crop + avg", "trained blend head"])
def test_exported_vectors_match_torch(kind, runtime_name, sample_files, tmp_path):
    """cosine >= 0.999 to the torch fp32 path and >= 95% of top-10 lists shared, on the sample
    drawings and on real photos, for today's default, an old index's model and a trained head,
    under ONNX Runtime and under OpenVINO."""
    import torch

    from imgembed.model.network import load_model as load_torch
    from imgembed.model.network import save_checkpoint

    if kind == "default":
        name, like = "efficientnet_lite0", None
    elif kind == "legacy crop + avg":
        from imgembed.model.backbones import legacy_preprocess

        name, like = "efficientnet_lite0", {"backbone": "efficientnet_lite0",
                                            "preprocess": legacy_preprocess("efficientnet_lite0").to_dict()}
    else:
        base = load_torch(precision="fp32", inference=False)
        from imgembed.model.network import EmbeddingModel
        from imgembed.train import blend
        from imgembed.train.blend import BlendHead

        torch.manual_seed(0)
        base.use_blend_taps()  # the mid-level taps `train` gives it
        config = blend.head_config(base.tap_dims, 64, 0.5, base.taps)
        headed = EmbeddingModel(base.backbone_name, base.backbone, base.weights_id, base.preprocess, config,
                                pooling=base.pooling)
        assert isinstance(headed.head, BlendHead) and headed.taps == (8, 11, 15, 16)
        name, like = str(tmp_path / "blend.pt"), None
        save_checkpoint(headed, name, weights="imagenet")
    reference = load_torch(name, precision="fp32", like=like)
    onnx = runtime.export(reference, None, runtime_name)
    assert onnx is not None and onnx.identity == reference.identity and onnx.runtime == runtime_name
    items = list(sample_files) + _photos()
    a, b = embed(reference, items), embed(onnx, items)
    assert np.sum(a * b, axis=1).min() >= 0.999
    assert _agreement(a, b) >= 0.95


def test_an_index_built_by_one_runtime_is_searched_by_the_others(tmp_path, torch_model):
    folder = SAMPLES / "fruit"
    by_torch, by_onnx, by_default = tmp_path / "t", tmp_path / "o", tmp_path / "d"
    index_folder(folder, by_torch, torch_model, executor=LocalPool(workers=0))
    index_folder(folder, by_onnx, options=IndexOptions(runtime="onnx"), executor=LocalPool(workers=0))
    # the default model under OpenVINO, decoding in workers
    index_folder(folder, by_default, executor=LocalPool(workers=2))
    queries = sorted(folder.glob("*.png"))[:5] + sorted(QUERIES.glob("*.png"))[:3]
    ranked = {}
    for index in (by_torch, by_onnx, by_default):
        for runtime_name in ("torch", "onnx", "openvino"):
            with Searcher(index, runtime=runtime_name) as s:
                assert s.model.runtime == runtime_name
                hits = s.search(queries, k=5)
            assert [h.hits[0].row.full_path for h in hits[:5]] == [str(q) for q in queries[:5]]
            ranked[index, runtime_name] = [[x.row.full_path for x in h.hits] for h in hits]
    expected = ranked[by_torch, "torch"]
    for got in ranked.values():
        assert np.mean([len(set(x) & set(y)) / 5 for x, y in zip(got, expected)]) >= 0.95


def test_a_cached_model_answers_queries_without_torch(sample_index):
    """After the first use, `search`, `classify` and `compare` load the export and never import
    torch: that is what makes a cold query take a fraction of a second."""
    load_model()  # the export exists (as `imgembed index` leaves it)
    query = QUERIES / "fish_altum_angelfish_01.png"
    probe = ("import sys; from imgembed.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    for args in (["search", query, "--index", sample_index, "-k", "3"], ["classify", query, "--index", sample_index],
                 ["compare", query, SAMPLES / "fruit" / "pear.png"]):
        out = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True,
                             cwd=ROOT, timeout=300, check=True).stdout
        assert out.strip().splitlines()[-1] == "no torch", args
    # fp32 under torch: the same ranking to the last place. (Under bf16, which `auto` picks on CPUs
    # with AVX-512 BF16, two neighbours 0.0004 apart here may swap: the parity tests above bound that.)
    torch_hits = run_json("search", query, "--index", sample_index, "-k", "5", "--runtime", "torch", "--precision", "fp32")
    onnx_hits = run_json("search", query, "--index", sample_index, "-k", "5", "--runtime", "onnx")
    assert [h["path"] for h in torch_hits[0]["results"]] == [h["path"] for h in onnx_hits[0]["results"]]


def test_a_damaged_or_unwritable_cache_never_breaks_a_query(tmp_path, monkeypatch, sample_files):
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMGEMBED_MODEL_CACHE", str(cache))
    first = load_model()
    assert first.runtime == "onnx"
    expected = embed(first, sample_files[:4])
    for damaged in [p for p in cache.glob("*.onnx")]:
        damaged.write_bytes(damaged.read_bytes()[:1000])  # truncated, e.g. by a full disk
    again = load_model()  # the export is made again
    assert again.runtime == "onnx"
    np.testing.assert_allclose(embed(again, sample_files[:4]), expected, atol=1e-5)

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("IMGEMBED_MODEL_CACHE", str(blocked))
    fallback = load_model()  # cannot cache: the torch model does the work
    assert fallback.runtime == "torch"
    assert np.sum(embed(fallback, sample_files[:4]) * expected, axis=1).min() >= 0.999


def test_runtime_choice(monkeypatch):
    assert runtime.choose("torch") == "torch"
    assert runtime.choose("auto", "bf16") == "torch"  # bf16 asked for: the exports run fp32
    assert runtime.choose("auto") == "onnx"  # queries: the runtime that imports fastest
    assert [runtime.for_indexing(r) for r in ("auto", "onnx", "torch")] == ["openvino", "onnx", "torch"]
    assert runtime.for_indexing("auto", "bf16") == "auto"
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    assert runtime.for_indexing("auto") == "auto"
    with pytest.raises(RuntimeUnavailableError, match="pip install openvino"):
        runtime.choose("openvino")
    monkeypatch.setattr(runtime, "onnx_available", lambda: False)
    assert runtime.choose("auto") == "torch"  # the fallback where onnxruntime is missing
    with pytest.raises(RuntimeUnavailableError, match="pip install onnxruntime"):
        runtime.choose("onnx")


def test_a_runtime_that_does_not_reproduce_the_torch_vectors_is_not_used(tmp_path, monkeypatch, sample_files):
    """OpenVINO is trusted only once it gives the vectors torch recorded at export: on a CPU or a
    version where it does not, indexing runs under ONNX Runtime, whose vectors are checked too."""
    monkeypatch.setenv("IMGEMBED_MODEL_CACHE", str(tmp_path / "cache"))
    good = load_model(runtime="openvino")
    assert good.runtime == "openvino"
    expected = embed(good, sample_files[:4])
    real = runtime.OpenVinoModel._run

    def cannot_compile(self):
        raise RuntimeError("no CPU plugin")  # what a broken OpenVINO install raises

    for fault in (("_run", lambda self, x: real(self, x)[:, ::-1].copy()), ("_open", cannot_compile)):
        with monkeypatch.context() as m:
            m.setattr(runtime.OpenVinoModel, *fault)
            for _ in range(2):  # from the cache, then from a fresh export
                model = load_model(runtime="openvino")
                assert model.runtime == "onnx", fault[0]
                np.testing.assert_allclose(embed(model, sample_files[:4]), expected, atol=1e-5)
                for path in (tmp_path / "cache").glob("*.onnx"):
                    path.unlink()


def test_a_retrained_checkpoint_at_the_same_path_is_a_new_export(tmp_path, torch_model):
    """The cache is keyed by content: overwriting models/x.pt with a new training run must not
    answer with the old head."""
    import torch

    from imgembed.model.network import EmbeddingModel, save_checkpoint

    path = tmp_path / "x.pt"
    m = torch_model
    vectors = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        headed = EmbeddingModel(m.backbone_name, m.backbone, m.weights_id, m.preprocess, {"type": "linear", "dim": 32},
                                pooling=m.pooling)
        save_checkpoint(headed, path, weights="imagenet")
        loaded = load_model(str(path))
        assert loaded.runtime == "onnx"
        vectors.append(embed(loaded, [SAMPLES / "fruit" / "pear.png"])[0])
    assert float(vectors[0] @ vectors[1]) < 0.99
