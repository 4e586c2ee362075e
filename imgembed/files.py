"""Finding image files under a folder and fingerprinting their content.

The walk is deterministic (sorted), skips hidden files and folders, follows symlinks to
directories at most once each (so a symlink loop cannot hang a run) and yields files whose
extension says they may be images; decoding decides whether they really are.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff"}
)


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def iter_images(root: Path) -> Iterator[Path]:
    """Yield image-like files under ``root`` in sorted order; paths are ``root / relative``."""
    seen_dirs: set[tuple[int, int]] = set()

    def walk(folder: Path) -> Iterator[Path]:
        try:
            st = folder.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        subdirs = []
        for entry in entries:
            if is_hidden(entry.name):
                continue
            try:
                if entry.is_dir():
                    subdirs.append(entry)
                elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield folder / entry.name
            except OSError:
                continue
        for entry in subdirs:
            yield from walk(folder / entry.name)

    yield from walk(root)


def content_hash(data: bytes) -> str:
    """Hex digest identifying a file's bytes (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
