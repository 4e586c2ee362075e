"""bf16 vs fp32 on the sample images: embedding parity and forward throughput, in one process.

    .venv/bin/python bench/archive/precision_parity.py

Prints the minimum and mean cosine between each image's bf16 and fp32 embeddings, the share of
top-10 neighbour lists that agree, and images per second of the model's forward pass on a
pre-made batch of 64 (no decoding) for: the unfolded fp32 model in the default memory layout
(a plain torchvision-style baseline), fp32 with BatchNorm folded and channels_last, and bf16.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, quality, quality_data

from pathlib import Path

import numpy as np
import torch

from imgembed.api import embed
from imgembed.model.network import embed_tensor, load_model

from common import images_per_second

SAMPLES = Path(__file__).resolve().parents[2] / "sample_images"


def main() -> None:
    files = sorted(SAMPLES.rglob("*.png"))
    plain = load_model(precision="fp32", inference=False)
    plain.to(memory_format=torch.contiguous_format)
    fp32, bf16 = load_model(precision="fp32"), load_model(precision="bf16")
    a, b = embed(fp32, files), embed(bf16, files)
    cos = np.sum(a * b, axis=1)
    top = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1:11]  # noqa: E731
    agree = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top(a), top(b))])
    print(f"{len(files)} sample images: bf16 vs fp32 cosine min {cos.min():.5f} mean {cos.mean():.5f}; "
          f"top-10 neighbours agree {agree:.3f}")

    batch = torch.randn(64, 3, 224, 224)

    @torch.inference_mode()
    def baseline(x):
        return plain(x)

    rates = {
        "fp32, unfolded, default layout": images_per_second(baseline, batch),
        "fp32, folded BN, channels_last": images_per_second(lambda x: embed_tensor(fp32, x), batch),
        "bf16 (fp32 stem), folded, channels_last": images_per_second(lambda x: embed_tensor(bf16, x), batch),
    }
    base = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"{name:<42} {rate:7.1f} images/s  {rate / base:4.2f}x")


if __name__ == "__main__":
    main()
