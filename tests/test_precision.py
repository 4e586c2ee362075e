"""The bf16 fast path gives the same embeddings and neighbours as fp32 on the sample images."""

import numpy as np
import pytest
import torch

from imgembed.api import embed
from imgembed.model import precision
from imgembed.model.network import load_model


def test_bf16_matches_fp32_on_sample_images(sample_files):
    fp32 = embed(load_model(precision="fp32"), sample_files)
    bf16 = embed(load_model(precision="bf16"), sample_files)
    cosines = np.sum(fp32 * bf16, axis=1)
    assert cosines.min() >= 0.999, cosines.min()
    k = 10
    top = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1:k + 1]  # noqa: E731 - neighbours, self excluded
    agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(top(fp32), top(bf16))])
    assert agree >= 0.95, agree


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", "cpu") == "fp32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("auto", "cpu") == "bf16"
    assert precision.resolve("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError):
        precision.resolve("fp8")


def test_inference_model_is_folded_channels_last_and_equivalent(sample_files):
    plain = load_model(precision="fp32", inference=False)
    fast = load_model(precision="fp32")
    assert fast.folded and not plain.folded and fast.precision == "fp32"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.backbone.modules())
    conv = next(p for p in fast.backbone.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    a, b = embed(plain, sample_files[:16]), embed(fast, sample_files[:16])
    np.testing.assert_allclose(a, b, atol=1e-4)
