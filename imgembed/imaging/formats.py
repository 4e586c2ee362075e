"""Phone and camera formats beyond Pillow's own, read through well-kept plugins.

- HEIC/HEIF (the iPhone default) through ``pillow-heif``, registered with Pillow the first time a
  file that starts like an ISO media file (``ftyp`` at byte 4) is decoded, so that no other
  decode pays for its import. libheif applies the file's rotation and mirroring itself and resets
  the EXIF orientation, so a HEIC comes out upright exactly as a JPEG does after its EXIF
  orientation is applied.
- AVIF through Pillow itself (11.3 and newer read it natively), else ``pillow-avif-plugin``.
- RAW camera files (DNG, CR2, CR3, NEF, ARW, ORF, RW2, RAF, PEF, SRW) through ``rawpy``
  (LibRaw): the preview the camera embedded, a full-size or near full-size JPEG in most files,
  which is what the camera showed and what a similarity search needs; developing the raw sensor
  data would cost seconds a file and change with the developer's settings. A RAW file without a
  preview is skipped with that reason.

Each missing plugin turns into a skip reason that names the package to install.
"""

from __future__ import annotations

import io
import threading

from PIL import Image, features

from ..errors import ImageLoadError

HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
AVIF_EXTENSIONS = frozenset({".avif"})
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".orf", ".rw2", ".raf", ".pef", ".srw"})
EXTENSIONS = HEIF_EXTENSIONS | AVIF_EXTENSIONS | RAW_EXTENSIONS

_lock = threading.Lock()
_registered: dict[str, bool] = {}


def _register(name: str) -> bool:
    """Register a Pillow plugin once per process; whether it is available."""
    with _lock:
        if name not in _registered:
            try:
                if name == "heif":
                    from pillow_heif import register_heif_opener

                    register_heif_opener()
                elif features.check("avif"):
                    pass  # Pillow reads AVIF itself
                else:
                    import pillow_avif  # noqa: F401  (registers itself on import)
                _registered[name] = True
            except ImportError:
                _registered[name] = False
        return _registered[name]


def prepare(data: bytes) -> None:
    """Make sure Pillow can open ``data`` if it is a HEIF or AVIF file (ISO media: ``ftyp`` at
    byte 4, then the brand); raise :class:`ImageLoadError` naming the package that is missing."""
    if data[4:8] != b"ftyp":
        return
    brand = data[8:12]
    if brand in (b"avif", b"avis"):
        if not _register("avif"):
            raise ImageLoadError("AVIF support is not installed (pip install pillow-avif-plugin)")
    elif not _register("heif"):
        raise ImageLoadError("HEIC/HEIF support is not installed (pip install pillow-heif)")


def is_raw(suffix: str) -> bool:
    return suffix.lower() in RAW_EXTENSIONS


def raw_preview(data: bytes) -> Image.Image:
    """The preview embedded in a RAW camera file, as a PIL image (not yet loaded for a JPEG
    preview, so that draft-mode decoding still applies)."""
    try:
        import rawpy
    except ImportError:
        raise ImageLoadError("RAW support is not installed (pip install rawpy)") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        raise ImageLoadError("RAW file has no embedded preview that can be read") from None
    except (rawpy.LibRawError, OSError, ValueError) as e:
        raise ImageLoadError(f"cannot read RAW file: {str(e).strip() or type(e).__name__}") from None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        return Image.open(io.BytesIO(thumb.data))
    return Image.fromarray(thumb.data)  # BITMAP: an (h, w, 3) uint8 array
