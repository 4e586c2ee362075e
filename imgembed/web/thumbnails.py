"""JPEG thumbnails of indexed images for `imgembed serve`, cached on disk by content hash and size."""

from __future__ import annotations

import io
from pathlib import Path

from ..imaging.decode import read_image
from ..imaging.files import atomic_path
from ..index.store import ImageRow


class Thumbnails:
    """JPEG thumbnails of indexed images, cached on disk by content hash and size, so that a page
    of a 100,000-image collection costs file reads, not decodes, from its second visit on.

    Without a folder nothing is cached. A file that changed has another hash, so another
    thumbnail; a cache that cannot be written costs speed, never an answer. An image that cannot
    be read raises :class:`~imgembed.errors.ImageLoadError`."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder is not None else None

    def path(self, row: ImageRow, size: int) -> Path | None:
        """Where the thumbnail of ``row`` at ``size`` is cached (None: not cached)."""
        if self.folder is None or not row.hash:
            return None
        return self.folder / str(size) / row.hash[:2] / f"{row.hash}.jpg"

    def get(self, row: ImageRow, size: int) -> bytes:
        cached = self.path(row, size)
        if cached is not None and cached.is_file():
            return cached.read_bytes()
        data = render(Path(row.full_path), size)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(cached, durable=False) as tmp:
                    tmp.write_bytes(data)
            except OSError:
                pass  # a read-only cache costs speed, never an answer
        return data


def render(path: Path, size: int) -> bytes:
    """The image at ``path`` scaled to fit ``size`` px, as JPEG bytes."""
    img = read_image(path, min_side=size).image
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()
