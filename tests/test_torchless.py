"""The model without torch: torch's files read with numpy, the default backbone's ONNX graph built
from its packaged weights, and trained checkpoints used through the export `train` writes
beside them. Each is checked against torch itself, so these tests need the train extra; the
base install as a user gets it is tests/test_base_install.py."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import QUERIES, ROOT, SAMPLES, run_cli, without_torch

torch = pytest.importorskip("torch")

from imgembed.api import embed, load_model  # noqa: E402
from imgembed.errors import ModelError  # noqa: E402
from imgembed.inference import runtime  # noqa: E402
from imgembed.model import lite_arch, lite_onnx, torchfile  # noqa: E402


def test_torch_files_read_bit_for_bit_as_torch_reads_them(tmp_path):
    path = lite_arch.packaged_weights_path()  # the legacy (pre-1.6) format
    ours, theirs = torchfile.load(path), torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs) and len(ours) == 296
    for key, value in theirs.items():
        assert ours[key].dtype == value.numpy().dtype and np.array_equal(ours[key], value.numpy()), key
    # the zip format torch writes today, with a non-contiguous view and a nested state dict
    state = {"w": torch.randn(4, 6)[:, 1::2], "n": torch.arange(7), "h": torch.randn(3).half()}
    torch.save({"state_dict": state}, tmp_path / "new.pt")
    read = torchfile.load(tmp_path / "new.pt")
    assert all(np.array_equal(read[k], v.numpy()) for k, v in state.items())


def test_a_torch_file_that_would_run_code_or_is_truncated_is_refused_by_name(tmp_path):
    class Hostile:
        def __reduce__(self):
            return (print, ("ran code from a weights file",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Hostile()}, evil)
    with pytest.raises(ModelError, match=r"evil\.pt: holds .*print, which is not"):
        torchfile.load(evil)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(lite_arch.packaged_weights_path(), "rb").read()[:5_000_000])
    with pytest.raises(ModelError, match=r"cut\.pth"):
        torchfile.load(cut)
    not_torch = tmp_path / "notes.pt"
    not_torch.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelError, match=r"notes\.pt"):
        torchfile.load(not_torch)


@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy-index"])
def test_the_built_graph_gives_the_torch_models_vectors_and_neighbours(tmp_path, monkeypatch, sample_files, legacy):
    """Worst cosine >= 0.9999 on every sample image, the same top-10 for each, and the identity
    an index records: an index built under torch is searched by the built graph and back."""
    from imgembed.model.backbones import legacy_preprocess
    from imgembed.model.network import load_model as load_torch

    monkeypatch.setenv("IMGEMBED_MODEL_CACHE", str(tmp_path / "cache"))
    like = {"backbone": "efficientnet_lite0", "preprocess": legacy_preprocess("efficientnet_lite0").to_dict()} \
        if legacy else None
    reference = load_torch(precision="fp32", like=like)
    built = load_model(runtime="onnx", like=like)
    assert built.meta["built"] == "imgembed.model.lite_onnx" and "torch" not in built.meta
    assert built.identity == reference.identity
    a, b = embed(built, sample_files), embed(reference, sample_files)
    assert float((a * b).sum(axis=1).min()) >= 0.9999
    top = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1:11]  # noqa: E731
    assert (top(a) == top(b)).all()


def test_a_checkpoint_embeds_without_torch_through_its_export(tmp_path):
    """`train` writes mine.onnx beside mine.pt; an install without torch indexes and searches with
    it from an empty model cache, with the torch model's neighbours; an older checkpoint without
    the export gets one line naming the command that writes it."""
    ckpt, cache = tmp_path / "mine.pt", tmp_path / "cache"
    run_cli("train", SAMPLES, "--out", ckpt, "--epochs", "3", "--cache", tmp_path / "features", "-q")
    assert (tmp_path / "mine.onnx").is_file()
    query = QUERIES / "vehicles_1989_chevrolet_celebrit_01.png"
    without_torch("index", SAMPLES, "--index", tmp_path / "idx", "--model", ckpt, "--workers", "1", cache=cache)
    hits = without_torch("search", query, "--index", tmp_path / "idx", "-k", "5", "--json", cache=cache).stdout
    with_torch = run_cli("search", query, "--index", tmp_path / "idx", "-k", "5", "--json", "--runtime", "torch",
                         "--precision", "fp32").stdout
    import json

    assert [h["path"] for h in json.loads(hits)[0]["results"]] == \
        [h["path"] for h in json.loads(with_torch)[0]["results"]]

    (tmp_path / "mine.onnx").unlink()  # as a checkpoint written before train exported
    failed = without_torch("index", SAMPLES, "--index", tmp_path / "idx2", "--model", ckpt, cache=tmp_path / "c2",
                           check=False)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "imgembed export" in failed.stderr, failed.stderr
    run_cli("export", ckpt)
    without_torch("index", SAMPLES, "--index", tmp_path / "idx2", "--model", ckpt, cache=tmp_path / "c2")

    # a re-trained checkpoint at the same path makes the old export stale: never used for it
    run_cli("train", SAMPLES, "--out", tmp_path / "other.pt", "--epochs", "3", "--seed", "1",
            "--cache", tmp_path / "features", "-q")
    (tmp_path / "other.pt").replace(ckpt)
    stale = without_torch("search", query, "--index", tmp_path / "idx3", "--model", ckpt, cache=tmp_path / "c3",
                          check=False)
    assert stale.returncode == 1 and "is for another version of it" in stale.stderr, stale.stderr


def test_what_needs_torch_says_so_in_one_line(tmp_path):
    cases = [(["train", SAMPLES, "--out", tmp_path / "m.pt"], "imgembed train needs torch"),
             (["compare", SAMPLES / "fruit" / "pear.png", SAMPLES / "fruit" / "pear.png", "--runtime", "torch"],
              "--runtime torch needs torch"),
             (["compare", SAMPLES / "fruit" / "pear.png", SAMPLES / "fruit" / "pear.png", "--model", "resnet18"],
              "needs torch")]
    for args, message in cases:
        proc = without_torch(*args, cache=tmp_path / "cache", check=False)
        assert proc.returncode == 1, args
        assert proc.stderr.count("\n") == 1 and message in proc.stderr and "imgembed[train]" in proc.stderr, \
            proc.stderr


def test_the_builder_is_only_used_for_what_it_builds():
    assert lite_onnx.buildable("efficientnet_lite0", "imagenet")
    assert not lite_onnx.buildable("efficientnet_lite0", "none")  # torch's seeded random init
    assert not lite_onnx.buildable("resnet18", "imagenet")
    assert runtime.beside_path("models/mine.pt").as_posix() == "models/mine.onnx"


def test_a_full_install_never_imports_torch_to_index_or_query_from_an_empty_cache(tmp_path):
    """Torch installed but not needed: the first index and query build the graph without it, and
    `models` lists the backbones without it."""
    probe = ("import sys; from imgembed.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    env = {**__import__("os").environ, "IMGEMBED_MODEL_CACHE": str(tmp_path / "empty-cache")}
    query = QUERIES / "fish_altum_angelfish_01.png"
    for args in (["index", SAMPLES, "--index", tmp_path / "idx", "-q"], ["search", query, "--index", tmp_path / "idx"],
                 ["models"]):
        out = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True,
                             cwd=ROOT, timeout=300, check=True, env=env).stdout
        assert out.strip().splitlines()[-1] == "no torch", args
