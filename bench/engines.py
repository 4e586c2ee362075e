"""Inference engines for the default embedding, side by side: speed and parity with torch fp32.

    .venv/bin/python bench/engines.py [--out bench/data/engines.json]

One run, one process, the same preprocessed images for every engine. The model is the default
for new indexes (EfficientNet-Lite0, padded 224 px input, GeM pooling), BatchNorm folded,
exported once to ONNX as `imgembed index` exports it. Engines:

- torch fp32 (the reference) and torch `auto` (bf16 with an fp32 stem where the CPU has it);
- ONNX Runtime fp32 on torch's export, and on the graph built without torch from the packaged
  weights (:mod:`imgembed.model.lite_onnx`: what queries run since the base install has no torch);
- ONNX Runtime int8: the export quantised statically (QDQ, per-channel weights), calibrated
  on 64 images that are not among the parity images (Debian's openclipart drawings where
  installed, else other crops of the photos);
- OpenVINO (what `imgembed index` runs) on the same ONNX file, in f32 and with its bf16
  inference precision hint, and on the int8 file.

For each: session load or compile time, images/s at batch 32 on all cores and on one thread
(decoding takes the other core while indexing), one image's latency (what a cold query pays),
and parity against torch fp32 on the 80 drawings of `sample_images/` and seven crops of each
scikit-image photo: worst and mean cosine, and how many of each image's top-10 neighbours
among all of them agree with torch fp32's (imgembed's bar: cosine >= 0.999, top-10 >= 95%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from imgembed.imaging.decode import read_image  # noqa: E402
from imgembed.imaging.files import iter_images  # noqa: E402
from imgembed.inference import runtime as rt  # noqa: E402
from imgembed.model.network import load_model  # noqa: E402

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry", "cat", "motorcycle_left"]
BATCH = 32


def photo_crops(count_per_photo: int, seed: int) -> list[Image.Image]:
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    out = []
    for name in PHOTOS:
        try:
            src = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        except Exception:  # noqa: BLE001 - a photo this scikit-image lacks
            continue
        w, h = src.size
        for _ in range(count_per_photo):
            cw, ch = int(w * rng.uniform(0.4, 0.9)), int(h * rng.uniform(0.4, 0.9))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            out.append(src.crop((x, y, x + cw, y + ch)))
    return out


def calibration_images() -> list[Image.Image]:
    clipart = Path("/usr/share/openclipart/png")
    files = sorted(clipart.rglob("*.png"))[::97][:32] if clipart.is_dir() else []
    images = []
    for f in files:
        try:
            images.append(read_image(f).image)
        except Exception:  # noqa: BLE001 - a damaged file: use the next
            continue
    return images + photo_crops(8, seed=99)[: 64 - len(images)]


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _median_s(fn, x: np.ndarray, repeats: int) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rate(fn, batch: np.ndarray, repeats: int = 5) -> float:
    return len(batch) / _median_s(fn, batch, repeats)


def latency_ms(fn, one: np.ndarray, repeats: int = 20) -> float:
    return 1000 * _median_s(fn, one, repeats)


def top10_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    def top(v):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :10]
    a, b = top(reference), top(other)
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))


def ort_engine(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def openvino_engine(path: Path, threads: int, precision: str):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)].copy()


def quantise(source: Path, dest: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration[i:i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    prepared = dest.with_suffix(".prep.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "data" / "engines.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    reference_model = load_model(precision="fp32")
    pre = reference_model.preprocess
    drawings = [read_image(p).image for p in sorted(iter_images(ROOT / "sample_images"))]
    photos = photo_crops(7, seed=0)
    parity = np.stack([pre.to_array(im) for im in drawings + photos]).astype(np.float32)
    calibration = np.stack([pre.to_array(im) for im in calibration_images()]).astype(np.float32)
    n_draw = len(drawings)
    speed_batch = np.ascontiguousarray(parity[:BATCH])
    print(f"{cores} cores; parity set: {n_draw} drawings, {len(photos)} photos; calibration {len(calibration)}")

    work = Path(tempfile.mkdtemp(prefix="imgembed-engines-"))
    os.environ["IMGEMBED_MODEL_CACHE"] = str(work)
    onnx = rt.export(reference_model)
    if onnx is None:
        raise SystemExit("the ONNX export failed its parity check; nothing to compare")
    import onnx as onnx_lib

    from imgembed.model import lite_onnx

    built_path = work / "built.onnx"
    onnx_lib.save(lite_onnx.build(reference_model.pooling), str(built_path))
    int8_path = work / "int8.onnx"
    t = time.perf_counter()
    quantise(onnx.path, int8_path, calibration)
    print(f"int8 quantisation {time.perf_counter() - t:.1f} s")

    def torch_engine(precision: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        model = load_model(precision=precision)
        return lambda x: model.embed_array(x)

    engines = {
        "torch fp32": lambda threads: torch_engine("fp32", threads),
        f"torch auto ({'bf16' if _has_bf16() else 'fp32'} here)": lambda threads: torch_engine("auto", threads),
        "ONNX Runtime fp32": lambda threads: ort_engine(onnx.path, threads),
        "ONNX Runtime fp32, built without torch": lambda threads: ort_engine(built_path, threads),
        "ONNX Runtime int8": lambda threads: ort_engine(int8_path, threads),
    }
    try:
        import openvino  # noqa: F401
        engines["OpenVINO f32"] = lambda threads: openvino_engine(onnx.path, threads, "f32")
        engines["OpenVINO f32, built without torch"] = lambda threads: openvino_engine(built_path, threads, "f32")
        engines["OpenVINO bf16 hint"] = lambda threads: openvino_engine(onnx.path, threads, "bf16")
        engines["OpenVINO int8"] = lambda threads: openvino_engine(int8_path, threads, "")
    except ImportError:
        print("openvino not installed: its rows are left out (pip install openvino)")

    reference = None
    rows = []
    for name, make in engines.items():
        t = time.perf_counter()
        fn = make(cores)
        load = time.perf_counter() - t
        vectors = unit(np.concatenate([fn(parity[i:i + BATCH]) for i in range(0, len(parity), BATCH)]))
        if reference is None:
            reference = vectors
        cos = (vectors * reference).sum(axis=1)
        row = {"engine": name, "load_s": load, "rate_all": rate(fn, speed_batch),
               "latency_ms": latency_ms(fn, speed_batch[:1]),
               "cos_min_drawings": float(cos[:n_draw].min()), "cos_min_photos": float(cos[n_draw:].min()),
               "cos_mean": float(cos.mean()), "top10": top10_agreement(reference, vectors)}
        del fn
        row["rate_one"] = rate(make(1), speed_batch, repeats=3)
        rows.append(row)
        print(f"{name:24s} load {row['load_s']:5.2f} s  {row['rate_all']:6.1f} img/s ({cores} threads)  "
              f"{row['rate_one']:6.1f} img/s (1 thread)  1 image {row['latency_ms']:5.1f} ms  "
              f"cos min {row['cos_min_drawings']:.5f} / {row['cos_min_photos']:.5f}  mean {row['cos_mean']:.6f}  "
              f"top-10 {row['top10']:.3f}", flush=True)

    base = next(r for r in rows if r["engine"] == "ONNX Runtime fp32")
    print("\n| engine | load | images/s, all cores | vs ORT fp32 | images/s, 1 thread | one image | worst cosine "
          "(drawings / photos) | top-10 agree | parity |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = r["cos_min_drawings"] >= rt.PARITY_MIN_COSINE and r["cos_min_photos"] >= rt.PARITY_MIN_COSINE \
            and r["top10"] >= 0.95
        print(f"| {r['engine']} | {r['load_s']:.2f} s | {r['rate_all']:.1f} | {r['rate_all'] / base['rate_all']:.2f}x "
              f"| {r['rate_one']:.1f} | {r['latency_ms']:.1f} ms | {r['cos_min_drawings']:.5f} / "
              f"{r['cos_min_photos']:.5f} | {r['top10']:.3f} | {'yes' if ok else 'no'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cores": cores, "bf16": _has_bf16(), "rows": rows}, indent=1))


def _has_bf16() -> bool:
    from imgembed.model.precision import resolve

    return resolve("auto") == "bf16"


if __name__ == "__main__":
    main()
