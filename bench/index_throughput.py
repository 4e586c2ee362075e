"""Indexing throughput: the plain baseline vs `imgembed index` vs the forward-pass ceiling.

    .venv/bin/python bench/index_throughput.py [--photos 400]

Builds its own data once under bench/data/: `photos12mp/`, JPEGs of 4000x3000 made by
upscaling, cropping and colour-shifting the scikit-image photos with different seeds (quality
92, about 1-3 MB each), and `small_png/`, 2,000 PNGs of about 256 px made from the sample
drawings (rotated, mirrored, rescaled, colour-shifted); and uses `sample_images/` (80 small
PNGs, where process start-up dominates). For each folder, in one run
and on the same files and backbone (EfficientNet-Lite0):

- baseline: the usual tutorial loop: `PIL.Image.open(p).convert("RGB")` at full size,
  torchvision `Resize(256)/CenterCrop(224)/ToTensor/Normalize`, the model in fp32 eval mode,
  batches of 32, vectors added to a flat FAISS index;
- imgembed: `imgembed index FOLDER` as a fresh process, timed from process start to exit, once
  per inference runtime (`--runtime openvino`, what `auto` takes for indexing where OpenVINO
  is installed, `--runtime onnx` and `--runtime torch`), with its peak memory;
- ceiling: the model's forward pass alone, on pre-made batches of 64, under each runtime.

It also prints the per-image cost of imgembed's decode (draft mode) and of its forward pass,
and the cosine between baseline and imgembed embeddings in fp32 mode.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image, ImageEnhance
from skimage import data as skdata

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import images_per_second, run_measured  # noqa: E402

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry"]


def _built(dest: Path, count: int) -> bool:
    """Whether ``dest`` holds a finished set of ``count`` files; if not, it is emptied for one."""
    marker = dest / ".complete"
    if marker.is_file() and marker.read_text() == str(count):
        return True
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    return False


def make_photos(dest: Path, count: int) -> Path:
    if _built(dest, count):
        return dest
    rng = np.random.default_rng(0)
    sources = [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in PHOTOS]
    for i in range(count):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch)).resize((4000, 3000), Image.BICUBIC)
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.7, 1.3)))
        img.save(dest / f"photo_{i:04d}.jpg", "JPEG", quality=92)
    (dest / ".complete").write_text(str(count))
    return dest


def make_small(dest: Path, count: int) -> Path:
    """``count`` small PNGs (about 256 px, like icons, clip art or thumbnails) made from the
    sample drawings: each rotated, mirrored, rescaled and colour-shifted differently."""
    if _built(dest, count):
        return dest
    rng = np.random.default_rng(1)
    sources = [Image.open(p).convert("RGBA") for p in sorted((ROOT / "sample_images").rglob("*.png"))]
    for i in range(count):
        img = sources[i % len(sources)].rotate(90 * int(rng.integers(0, 4)), expand=True)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        scale = float(rng.uniform(0.7, 1.3))
        img = img.resize((max(8, int(img.width * scale)), max(8, int(img.height * scale))), Image.BICUBIC)
        rgb = ImageEnhance.Color(img.convert("RGB")).enhance(float(rng.uniform(0.6, 1.4)))
        rgb.putalpha(img.getchannel("A"))
        rgb.save(dest / f"small_{i:05d}.png")
    (dest / ".complete").write_text(str(count))
    return dest


def files_of(folder: Path) -> list[Path]:
    from imgembed.imaging.files import iter_images

    return list(iter_images(folder))


# The ImageNet evaluation transform and average pooling, as in every tutorial (and in indexes
# built before imgembed's default became pad + GeM).
LEGACY = {"backbone": "efficientnet_lite0", "preprocess": {
    "resize": 256, "crop": 224, "mean": [127 / 255] * 3, "std": [128 / 255] * 3, "interpolation": "bicubic"}}


def baseline(files: list[Path]) -> tuple[float, np.ndarray]:
    """The plain loop; returns (images/s, vectors)."""
    from torchvision import transforms as T

    from imgembed.model.network import load_model

    start = time.perf_counter()
    model = load_model(precision="fp32", inference=False, like=LEGACY).to(memory_format=torch.contiguous_format)
    pre = model.preprocess
    transform = T.Compose([T.Resize(pre.resize, interpolation=T.InterpolationMode(pre.interpolation)),
                           T.CenterCrop(pre.crop), T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    index = faiss.IndexFlatIP(model.dim)
    out = []
    with torch.inference_mode():
        for i in range(0, len(files), 32):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in files[i:i + 32]])
            v = torch.nn.functional.normalize(model(batch), dim=1).numpy()
            index.add(v)
            out.append(v)
    return len(files) / (time.perf_counter() - start), np.concatenate(out)


def imgembed_cli(folder: Path, n: int, runtime: str) -> tuple[float, float, float]:
    """(images/s of the whole process, images/s the run itself reports: start-up excluded, peak MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, peak, out = run_measured([str(Path(sys.executable).parent / "imgembed"), "index", str(folder),
                                        "--index", tmp, "-q", "--json", "--runtime", runtime])
        return n / wall, json.loads(out)["images_per_s"], peak


def ceiling(runtime: str, batch_size: int = 64) -> float:
    from imgembed.api import load_model

    model = load_model(precision="auto", runtime=runtime)
    x = np.random.default_rng(0).standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
    return images_per_second(model.embed_array, x)


def decode_cost(files: list[Path]) -> float:
    """Seconds per file of what a decode worker does: read, hash, decode (draft mode), the
    perceptual hash and the default model's preprocessing."""
    from imgembed.imaging.decode import DEFAULT_MAX_PIXELS
    from imgembed.inference.pool import decode
    from imgembed.model.backbones import default_preprocess

    pre = default_preprocess("efficientnet_lite0")
    sample = files[:40]
    start = time.perf_counter()
    for p in sample:
        decode(p, pre.to_array, pre.min_side, DEFAULT_MAX_PIXELS, 30.0)
    return (time.perf_counter() - start) / len(sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--small", type=int, default=2000, help="small PNGs made from the sample drawings")
    args = parser.parse_args()
    from imgembed.api import embed
    from imgembed.model.network import load_model
    from imgembed.model.precision import resolve

    photos = make_photos(HERE / "data" / "photos12mp", args.photos)
    small = make_small(HERE / "data" / "small_png", args.small)
    runtimes = ("openvino", "onnx", "torch")
    ceil = {runtime: ceiling(runtime) for runtime in runtimes}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, torch precision auto = {resolve('auto')}; "
          "forward ceiling: " + ", ".join(f"{r} {ceil[r]:.1f} images/s" for r in runtimes))
    cosines = None
    for name, folder in (("12 MP JPEG", photos), (f"{args.small} small PNGs", small),
                         ("sample_images", ROOT / "sample_images")):
        files = files_of(folder)
        base_rate, base_vecs = baseline(files)
        if cosines is None:  # photos: no transparency, which the baseline turns black and imgembed white
            cosines = np.sum(base_vecs[:64] * embed(load_model(precision="fp32", like=LEGACY), files[:64]), axis=1)
        dec = decode_cost(files)
        print(f"\n{name}: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.0f} MB")
        print(f"  baseline (full decode, fp32, batch 32)         {base_rate:7.1f} images/s  1.00x")
        for runtime in runtimes:
            ours, ours_run, peak = imgembed_cli(folder, len(files), runtime)
            print(f"  imgembed index --runtime {runtime:<8} whole process {ours:7.1f} images/s  {ours / base_rate:.2f}x  "
                  f"(its own run {ours_run:.1f}/s, {ours_run / base_rate:.2f}x; peak {peak:.0f} MB)")
        print(f"  per image: decode+preprocess {dec * 1e3:.1f} ms, forward "
              + " / ".join(f"{1e3 / ceil[r]:.1f} ms ({r})" for r in runtimes))
    print(f"\n12 MP photos, baseline vs imgembed with the baseline's crop + average pooling (fp32; the difference "
          f"is draft-mode decoding): min cosine {cosines.min():.4f}, mean {cosines.mean():.4f}")

if __name__ == "__main__":
    main()
