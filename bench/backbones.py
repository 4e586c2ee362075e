"""The EfficientNet-Lite backbones side by side: what Lite2 and the Lite0+Lite2 concatenation cost
against the default Lite0, on the product's torch-free runtimes.

    .venv/bin/python bench/backbones.py [--images 200] [--rounds 5] [--out bench/data/backbones.json]

One process, the same images for every backbone (``sample_images/`` repeated to ``--images``, or
``--folder``), each model built from its packaged weights into a fresh model cache, as a first
`imgembed index` builds it. For each runtime that runs the built graphs (ONNX Runtime, what
queries take; OpenVINO, what `index` takes where installed) and each backbone:

- forward: images/s of ``embed_array`` over the preprocessed images in batches of 32 (the model alone);
- end to end: images/s of :func:`imgembed.api.embed` over the files (decode, preprocess and
  forward in this process, one file after another).

Rounds interleave the backbones (Lite0, Lite2, concatenation, Lite0, ...) and each figure is the
median over rounds, so that a machine shared with other work slows all of them alike; the ratio
to Lite0 is within one runtime and one run, and is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from imgembed.api import embed, load_model  # noqa: E402
from imgembed.imaging.decode import read_image  # noqa: E402
from imgembed.inference import runtime as rt  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnet_lite2", "efficientnet_lite0_lite2")
BATCH = 32


def image_files(folder: Path, count: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        sys.exit(f"no images under {folder}")
    return list(islice(cycle(files), count))


def forward_rate(model, batch: np.ndarray) -> float:
    start = time.perf_counter()
    for i in range(0, len(batch), BATCH):
        model.embed_array(batch[i:i + BATCH])
    return len(batch) / (time.perf_counter() - start)


def end_to_end_rate(model, files: list[Path]) -> float:
    start = time.perf_counter()
    embed(model, files, batch_size=BATCH)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--folder", type=Path, default=ROOT / "sample_images")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    files = image_files(args.folder, args.images)
    runtimes = ["onnx"] + (["openvino"] if rt.openvino_available() else [])
    os.environ["IMGEMBED_MODEL_CACHE"] = tempfile.mkdtemp(prefix="imgembed-bench-models-")
    print(f"{len(files)} images from {args.folder}, {args.rounds} rounds, {os.cpu_count()} CPUs; "
          f"runtimes: {', '.join(runtimes)}")

    models, build_s = {}, {}
    for name in BACKBONES:
        start = time.perf_counter()
        for runtime in runtimes:
            models[runtime, name] = load_model(name, runtime=runtime)
        build_s[name] = time.perf_counter() - start
        print(f"  {name}: built and loaded in {build_s[name]:.1f} s "
              f"({models['onnx', name].dim}-d, {models['onnx', name].preprocess.crop} px input)")
    batches = {}  # preprocessed once per input size: the forward figures leave decoding out
    for name in BACKBONES:
        pre = models["onnx", name].preprocess
        if pre not in batches:
            batches[pre] = np.stack([pre.to_array(read_image(f, min_side=pre.min_side, max_pixels=10**8).image)
                                     for f in files])

    rates: dict[tuple[str, str, str], list[float]] = {}
    for runtime in runtimes:
        for name in BACKBONES:  # warm-up: first runs allocate and tune
            forward_rate(models[runtime, name], batches[models[runtime, name].preprocess][:BATCH])
    for r in range(args.rounds):
        for runtime in runtimes:
            for name in BACKBONES:
                model = models[runtime, name]
                rates.setdefault((runtime, name, "forward"), []).append(forward_rate(model, batches[model.preprocess]))
                rates.setdefault((runtime, name, "end to end"), []).append(end_to_end_rate(model, files))
        print(f"  round {r + 1}/{args.rounds} done", flush=True)

    results = []
    print(f"\n{'runtime':<9} {'backbone':<25} {'forward img/s':>13} {'vs lite0':>8} {'end-to-end img/s':>16} "
          f"{'vs lite0':>8}")
    for runtime in runtimes:
        base = {kind: statistics.median(rates[runtime, BACKBONES[0], kind]) for kind in ("forward", "end to end")}
        for name in BACKBONES:
            med = {kind: statistics.median(rates[runtime, name, kind]) for kind in ("forward", "end to end")}
            results.append({"runtime": models[runtime, name].runtime, "backbone": name,
                            "dim": models[runtime, name].dim, "input": models[runtime, name].preprocess.crop,
                            **{f"{k.replace(' ', '_')}_images_per_s": round(v, 2) for k, v in med.items()},
                            **{f"{k.replace(' ', '_')}_vs_lite0": round(v / base[k], 3) for k, v in med.items()}})
            print(f"{models[runtime, name].runtime:<9} {name:<25} {med['forward']:>13.1f} "
                  f"{med['forward'] / base['forward']:>7.2f}x {med['end to end']:>16.1f} "
                  f"{med['end to end'] / base['end to end']:>7.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"images": len(files), "folder": str(args.folder), "rounds": args.rounds,
                                        "cpus": os.cpu_count(), "build_s": build_s, "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
