"""Finding image files under a folder, fingerprinting their content, and replacing files atomically.

The walk is deterministic (sorted), skips hidden files and folders, follows symlinks to
directories at most once each (so a symlink loop cannot hang a run) and yields files whose
extension says they may be images; decoding decides whether they really are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Iterator

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
     ".heic", ".heif", ".hif", ".avif",  # phone formats (imgembed.imaging.formats)
     ".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".orf", ".rw2", ".raf", ".pef", ".srw"}  # RAW previews
)


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def iter_images(root: Path) -> Iterator[Path]:
    """Yield image-like files under ``root`` in sorted order; paths are ``root / relative``."""
    root = Path(root)
    for _, relative, _ in walk_images(str(root)):
        yield root / relative


def walk_images(root: str) -> Iterator[tuple[str, str, os.DirEntry]]:
    """``(path, relative, entry)`` of each image-like file under ``root``, sorted by name
    folder by folder, hidden names and symlink loops skipped; ``relative`` is ``/``-separated.
    Strings and scandir entries, no Path objects: walking 10,000 unchanged files is most of what
    a routine `index` run costs."""
    seen_dirs: set[tuple[int, int]] = set()

    def walk(folder: str, prefix: str) -> Iterator[tuple[str, str, os.DirEntry]]:
        try:
            st = os.stat(folder)
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
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    yield entry.path, prefix + entry.name, entry
            except OSError:
                continue
        for entry in subdirs:
            yield from walk(entry.path, prefix + entry.name + "/")

    yield from walk(root, "")


def user_cache(name: str) -> Path:
    """``$XDG_CACHE_HOME/imgembed/NAME``, by default under ``~/.cache``: where the feature cache
    and the exported models live unless told otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgembed" / name


def content_hash(data: bytes) -> str:
    """Hex digest identifying a file's bytes (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Replace ``path`` all at once: the block writes the yielded temporary path beside it, which
    is then (``durable``: fsynced, with its folder) renamed over ``path``. A crash leaves the old
    file or the new one, never half of one; an error in the block leaves the old one and no
    temporary file. Temporary names are unique per process and thread, so two writers of one
    path never share one. The one way every file of imgembed is replaced.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
