"""The image sets of bench/quality.py: real images that install offline, written or linked as
labelled folders under bench/data/quality/sets/<set>/<class>/.

| set | what | why |
|---|---|---|
| clipart | openclipart-png leaf folders with >= 40 drawings (Debian, public domain) | drawings, many styles per class |
| clipart-top | the same drawings grouped by top-level folder | the hierarchy's coarse grouping |
| fashion | Fashion-MNIST test images, 10 classes (Debian dataset-fashion-mnist, MIT) | product photographs, 28x28 grey |
| digits | scikit-learn's handwritten digits, 10 classes (BSD) | 8x8 scans of handwriting |
| photos | see bench/photo_sets.py where present | labelled photographs |

Every set is capped at ``PER_CLASS`` images per class, chosen with a fixed seed.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from common import ensure_debian_package

HERE = Path(__file__).resolve().parent
ROOT = HERE / "data" / "quality" / "sets"
CLIPART = Path("/usr/share/openclipart/png")
FASHION = Path("/usr/share/datasets/fashion-mnist")
PER_CLASS = 60
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _done(dest: Path) -> bool:
    return (dest / ".complete").is_file()


def _finish(dest: Path) -> Path:
    (dest / ".complete").write_text("ok\n")
    return dest


def clipart(dest: Path, top: bool = False) -> Path:
    if _done(dest):
        return dest
    ensure_debian_package("openclipart-png", CLIPART)
    rng = np.random.default_rng(0)
    for folder in sorted(p for p in CLIPART.rglob("*") if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        if len(files) < 40:
            continue
        rel = folder.relative_to(CLIPART).as_posix()
        name = rel.split("/")[0] if top else rel.replace("/", "__")
        chosen = [files[i] for i in sorted(rng.permutation(len(files))[:PER_CLASS])]
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in chosen:
            link = dest / name / f"{rel.replace('/', '__')}__{f.name}"
            if not link.exists():
                link.symlink_to(f)
    return _finish(dest)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _write_arrays(dest: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(names):
        idx = np.flatnonzero(labels == c)
        idx = np.sort(rng.permutation(idx)[:PER_CLASS])
        (dest / name).mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i]).save(dest / name / f"{i:05d}.png")
    return _finish(dest)


def fashion(dest: Path) -> Path:
    if _done(dest):
        return dest
    ensure_debian_package("dataset-fashion-mnist", FASHION)
    images = _idx(FASHION / "t10k-images-idx3-ubyte.gz")
    labels = _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    return _write_arrays(dest, images, labels, FASHION_CLASSES)


def digits(dest: Path) -> Path:
    if _done(dest):
        return dest
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("the digits set needs scikit-learn: .venv/bin/pip install scikit-learn")
    d = load_digits()
    images = (d.images * (255 / 16)).round().astype(np.uint8)
    images = 255 - images  # dark ink on white paper, as scanned
    return _write_arrays(dest, images, d.target, [f"digit{i}" for i in range(10)])


def photos(dest: Path) -> Path | None:
    try:
        import photo_sets
    except ImportError:
        return None
    if _done(dest):
        return dest
    name = "photos9"
    photo_sets.ensure(name)
    for path, label in photo_sets.load(name):
        (dest / label).mkdir(parents=True, exist_ok=True)
        link = dest / label / Path(path).name
        if not link.exists():
            link.symlink_to(path)
    return _finish(dest)


BUILDERS = {
    "clipart": lambda d: clipart(d),
    "clipart-top": lambda d: clipart(d, top=True),
    "fashion": fashion,
    "digits": digits,
    "photos": photos,
}
KIND = {"clipart": "drawings", "clipart-top": "drawings", "fashion": "photos", "digits": "drawings",
        "photos": "photos"}


def available(names) -> dict[str, tuple[list[Path], np.ndarray, list[str]]]:
    """:func:`labelled` of each set in ``names`` that can be had here, by name; the others are
    left out, saying so."""
    sets = {}
    for name in names:
        got = labelled(name)
        if got is None:
            print(f"{name}: not available, left out")
            continue
        sets[name] = got
    return sets


def labelled(name: str) -> tuple[list[Path], np.ndarray, list[str]] | None:
    """``(paths, labels, classes)`` of set ``name``, built on first use; None if unavailable."""
    dest = BUILDERS[name](ROOT / name)
    if dest is None:
        return None
    classes = sorted(p.name for p in dest.iterdir() if p.is_dir())
    paths, labels = [], []
    for c, cls in enumerate(classes):
        files = sorted(p for p in (dest / cls).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        paths += files
        labels += [c] * len(files)
    return paths, np.array(labels), classes
