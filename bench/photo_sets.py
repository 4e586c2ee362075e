"""Labelled sets of real photographs that Debian packages ship, for retrieval-quality benchmarks.

    python bench/photo_sets.py [NAME ...]     # installs what is missing, prints the counts per class

``load(name)`` returns sorted ``(absolute image path, class label)`` pairs: the classes with at
least ``min_per_class`` images, at most ``cap`` per class (spread evenly over the sorted list of the
class, so it is deterministic and keeps every sub-folder represented). No image is committed: they
are read from the installed packages (GCompris keeps its images inside a Qt resource file, so its
photos are copied once to ``bench/data/photo_sets/``, which git ignores).

Sets (all images are photographs; the drawn stamps, mirrored duplicates, "cartoon" folders, the
alphabet/number boards and the mixed "others" box are left out):

* ``tuxpaint``: ``tuxpaint-stamps-default`` (GPL-2), stamps cut out of photos on a transparent
  background (imgembed composites transparency on white): bird 35, mammal 63 (60 kept), fruit 26,
  flower 25, vegetable 18. Small: fruit and vegetable stamps are about 50x50 px (median side of
  the whole set ~180 px), so they are upscaled a lot by a 224-px model.
* ``gcompris``: ``gcompris-qt-data`` (GPL-3+ package; the photos are public domain, CC0 or
  CC-BY(-SA) Wikimedia Commons images, credited in README files inside the resource), full-frame
  photos of the "categorization" activity: fish 28, monument 27, renewable-energy 29, tool 39.
* ``photos9``: both, 9 classes. Caveat: the two sources differ in style (cut-outs on white against
  full-frame scenes), so confusions across sources are easier to avoid than within one source.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

STAMPS = Path("/usr/share/tuxpaint/stamps")
GCOMPRIS_RCC = Path("/usr/share/gcompris-qt/rcc/categorization.rcc")
CACHE = Path(__file__).resolve().parent / "data" / "photo_sets"

PHOTO_SETS: dict[str, tuple[str, str]] = {
    "tuxpaint": (
        "tuxpaint-stamps-default",
        "GPL-2; 5 classes of photo cut-outs (bird, mammal, fruit, flower, vegetable) from the stamp folders",
    ),
    "gcompris": (
        "gcompris-qt-data",
        "GPL-3+ package, PD/CC0/CC-BY(-SA) Commons photos; 4 classes (fish, monument, renewable-energy, tool)",
    ),
    "photos9": (
        "tuxpaint-stamps-default gcompris-qt-data",
        "union of the two above: 9 classes of real photographs (cut-outs vs full-frame differ in style)",
    ),
}

# label -> stamp folder (searched recursively)
_TUXPAINT_CLASSES = {
    "bird": "animals/birds",
    "mammal": "animals/mammals",
    "fruit": "food/fruit",
    "flower": "plants/flowers",
    "vegetable": "food/vegetables",
}
_TUXPAINT_SKIP_DIRS = {"cartoon", "toys"}  # drawings; a teddy bear is no mammal
_TUXPAINT_SKIP_FILES = {"animals/mammals/hedgehog.png"}  # a drawing among the photos

# label -> folder of the categorization activity inside the resource file
_GCOMPRIS_CLASSES = {
    "fish": "fishes",
    "monument": "monuments",
    "renewable-energy": "renewable",
    "tool": "tools",
}
_GCOMPRIS_PREFIX = "gcompris/src/activities/categorization/resource/images/"

_MARKERS = {"tuxpaint-stamps-default": STAMPS / "animals", "gcompris-qt-data": GCOMPRIS_RCC}


def ensure(name: str) -> None:
    """Install the Debian package(s) of set ``name`` with apt-get when their files are missing."""
    if name not in PHOTO_SETS:
        raise KeyError(f"unknown photo set {name!r}; known: {', '.join(PHOTO_SETS)}")
    for package in PHOTO_SETS[name][0].split():
        if _MARKERS[package].exists():
            continue
        print(f"installing Debian's {package} ...", file=sys.stderr)
        if shutil.which("apt-get") is None:
            raise RuntimeError(f"apt-get not found: install {package} (it provides {_MARKERS[package]})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
        if subprocess.run(cmd, env=env).returncode != 0:  # stale package lists: update once, retry
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
            subprocess.run(cmd, env=env, check=True)
        if not _MARKERS[package].exists():
            raise RuntimeError(f"{package} installed but {_MARKERS[package]} is missing")


def load(name: str, min_per_class: int = 15, cap: int = 60) -> list[tuple[str, str]]:
    """``(absolute image path, label)`` pairs of set ``name``, installing its packages if needed."""
    ensure(name)
    if name == "tuxpaint":
        groups = _tuxpaint()
    elif name == "gcompris":
        groups = _gcompris()
    elif name == "photos9":
        groups = {**_tuxpaint(), **_gcompris()}
    else:  # pragma: no cover - ensure() already refused it
        raise KeyError(name)
    pairs: list[tuple[str, str]] = []
    for label in sorted(groups):
        paths = sorted(groups[label])
        if len(paths) < min_per_class:
            continue
        if len(paths) > cap:
            paths = [paths[i * len(paths) // cap] for i in range(cap)]
        pairs.extend((p, label) for p in paths)
    return pairs


def _tuxpaint() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for label, folder in _TUXPAINT_CLASSES.items():
        found = []
        for path in (STAMPS / folder).rglob("*.png"):
            rel = path.relative_to(STAMPS)
            if _TUXPAINT_SKIP_DIRS & set(rel.parts[:-1]) or rel.as_posix() in _TUXPAINT_SKIP_FILES:
                continue
            if path.stem.endswith("_mirror"):  # a mirrored copy of another stamp
                continue
            found.append(str(path))
        groups[label] = found
    return groups


def _gcompris() -> dict[str, list[str]]:
    """Copy the activity's photos out of the Qt resource file once; return them by label."""
    dest = CACHE / "gcompris"
    groups: dict[str, list[str]] = {label: [] for label in _GCOMPRIS_CLASSES}
    by_folder = {folder: label for label, folder in _GCOMPRIS_CLASSES.items()}
    for path, data in _rcc_files(GCOMPRIS_RCC):
        if not path.startswith(_GCOMPRIS_PREFIX):
            continue
        folder, _, filename = path[len(_GCOMPRIS_PREFIX):].partition("/")
        label = by_folder.get(folder)
        if label is None or "/" in filename or not filename.lower().endswith((".webp", ".jpg", ".jpeg", ".png")):
            continue
        out = dest / label / filename
        payload = data()
        if not out.exists() or out.stat().st_size != len(payload):
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(out.suffix + ".tmp")
            tmp.write_bytes(payload)
            tmp.replace(out)
        groups[label].append(str(out))
    return groups


def _rcc_files(rcc: Path):
    """Yield ``(path, read)`` for each file in a Qt binary resource (``rcc`` format 1-3)."""
    blob = rcc.read_bytes()
    if blob[:4] != b"qres":
        raise ValueError(f"{rcc} is not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        start = names + offset + 6  # length, then a 4-byte hash, then UTF-16BE
        return blob[start : start + 2 * length].decode("utf-16-be")

    def reader(offset: int, flags: int):
        def read() -> bytes:
            (length,) = struct.unpack(">I", blob[offset : offset + 4])
            raw = blob[offset + 4 : offset + 4 + length]
            if flags & 1:  # zlib, behind a 4-byte uncompressed size
                return zlib.decompress(raw[4:])
            if flags & 4:
                raise ValueError(f"{rcc}: zstd-compressed entries are not supported")
            return raw

        return read

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        node = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[node : node + 6])
        path = prefix + name_at(name_offset) if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[node + 6 : node + 14])
            stack.extend((first + i, path + "/" if index else "") for i in range(count))
        else:
            (offset,) = struct.unpack(">I", blob[node + 10 : node + 14])
            yield path, reader(data + offset, flags)


def main(argv: list[str]) -> int:
    for name in argv or list(PHOTO_SETS):
        pairs = load(name)
        counts: dict[str, int] = {}
        for _, label in pairs:
            counts[label] = counts.get(label, 0) + 1
        print(f"{name}: {len(pairs)} images, {len(counts)} classes: "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
