"""Which padding and input normalisation make the converted EfficientNet-Lite0 weights predict
what the TensorFlow original does?

    .venv/bin/python bench/archive/lite0_padding.py

The weights were converted from TensorFlow, which pads stride-2 convolutions asymmetrically
("SAME"), and whose Lite preprocessing is ``(pixel - 127) / 128``. This script runs the four
combinations of {TF "SAME", symmetric PyTorch} padding x {(x-127)/128, ImageNet mean/std} on the
scikit-image photos with an unambiguous ImageNet class and prints the probability of that class.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, quality, quality_data

import torch
from PIL import Image
from skimage import data as skdata
from torch.nn import functional as F

from imgembed.imaging.preprocess import Preprocess
from imgembed.model.backbones import build_classifier
from imgembed.model.efficientnet_lite import SameConv2d
from imgembed.model.lite_arch import PREPROCESS_MEAN, PREPROCESS_STD
from imgembed.train.featcache import plain_transform

# photo -> ImageNet class indices that count as right
PHOTOS = {"chelsea": {281, 282, 283, 284, 285}, "coffee": {967}, "camera": {872}, "rocket": {657, 744}}
NORMS = {"(x-127)/128": (PREPROCESS_MEAN, PREPROCESS_STD), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def symmetric(conv: SameConv2d):
    def forward(x):
        return torch.nn.Conv2d.forward(conv, F.pad(x, [conv.kernel_size[0] // 2] * 4))
    return forward


def main() -> None:
    model, _ = build_classifier("efficientnet_lite0", "imagenet")
    images = [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in PHOTOS]
    print(f"{'padding':<10} {'normalisation':<14} " + " ".join(f"{n:>8}" for n in PHOTOS) + "    mean")
    for padding in ("TF SAME", "symmetric"):
        for conv in (m for m in model.modules() if isinstance(m, SameConv2d)):
            conv.__dict__.pop("forward", None)
            if padding == "symmetric":
                conv.forward = symmetric(conv)
        for norm, (mean, std) in NORMS.items():
            transform = plain_transform(Preprocess(256, 224, mean, std, "bicubic"))
            with torch.inference_mode():
                probs = model(torch.stack([transform(im) for im in images])).softmax(1)
            right = [float(p[list(classes)].sum()) for p, classes in zip(probs, PHOTOS.values())]
            print(f"{padding:<10} {norm:<14} " + " ".join(f"{r:>8.3f}" for r in right) + f"  {sum(right) / len(right):.3f}")


if __name__ == "__main__":
    main()
