"""Decode cost of a 12-megapixel JPEG: full-size decode vs imgembed's reduced-size (draft) decode.

    .venv/bin/python bench/archive/decode_draft.py

Builds a 4000x3000 JPEG from scikit-image's coffee photo (upscaled; the pixels are natural-photo
texture, so the entropy-decoding cost is realistic) and times, in the same process:
- baseline: ``PIL.Image.open(...).convert("RGB")`` at full size, then resize to 256;
- imgembed: ``read_image(..., min_side=256)`` (draft mode, EXIF, RGB conversion), then resize to 256.
Reports per-image milliseconds and the ratio, plus the cosine between the two final tensors'
embeddings so that the speed-up is seen not to change results.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, quality, quality_data

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata


def timed(fn, repeats: int = 7) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    from imgembed.api import embed, load_model
    from imgembed.imaging.decode import read_image

    photo = Image.fromarray(skdata.coffee()).resize((4000, 3000), Image.BICUBIC)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "12mp.jpg"
        photo.save(path, "JPEG", quality=92)
        size_mb = path.stat().st_size / 1e6

        def baseline():
            return Image.open(path).convert("RGB").resize((341, 256), Image.BILINEAR)

        def draft():
            return read_image(path, min_side=256).image.resize((341, 256), Image.BILINEAR)

        t_full, t_draft = timed(baseline), timed(draft)
        model = load_model()
        a, b = embed(model, [Image.open(path).convert("RGB"), path])
    print(f"12 MP JPEG ({size_mb:.1f} MB): full decode {t_full * 1e3:.1f} ms, draft decode {t_draft * 1e3:.1f} ms "
          f"-> {t_full / t_draft:.1f}x faster; embedding cosine full vs draft {float(np.dot(a, b)):.4f}")


if __name__ == "__main__":
    main()
