"""Reading any common image file as an upright 8-bit RGB PIL image.

Handles JPEG, PNG, WebP, BMP, GIF (first frame), TIFF, and through :mod:`imgembed.imaging.formats`
HEIC/HEIF, AVIF and the previews embedded in RAW camera files; applies EXIF orientation,
composites transparency onto white, converts palette, greyscale, CMYK and 16-bit images, and
decodes large JPEGs at reduced size (PIL draft mode) when the caller only needs ``min_side``
pixels on the short side. Every failure becomes an :class:`ImageLoadError` with a short reason.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS  # the decoding defaults, defined there
from ..errors import ImageLoadError
from . import formats
from .files import content_hash

_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for a model, with facts about the file it came from."""

    image: Image.Image
    width: int  # of the stored image, before draft reduction and EXIF rotation
    height: int
    hash: str


def read_image(path: str | Path, *, min_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read ``path`` once: hash its bytes and decode them."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageLoadError(f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise ImageLoadError("empty file")
    image, width, height = decode_image(data, min_side=min_side, max_pixels=max_pixels,
                                        raw=formats.is_raw(Path(path).suffix))
    return LoadedImage(image, width, height, content_hash(data))


class _DecodeTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _DecodeTimeout


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Interrupt the enclosed decode after ``seconds`` (SIGALRM; only in a main thread, where
    decoding workers run; elsewhere no limit applies)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_for_model(path: str | Path, *, min_side: int | None, max_pixels: int = DEFAULT_MAX_PIXELS,
                   timeout: float | None = DEFAULT_DECODE_TIMEOUT) -> LoadedImage:
    """The one decode path of every model input (`index`, `train`, `evaluate`, the feature
    cache, queries): :func:`read_image` within ``timeout`` seconds. Every failure, a hanging
    decoder or a decoder bug included, is an :class:`ImageLoadError` whose message is the reason
    the file is reported with."""
    try:
        with _time_limit(timeout):
            return read_image(path, min_side=min_side, max_pixels=max_pixels)
    except ImageLoadError:
        raise
    except _DecodeTimeout:
        raise ImageLoadError(f"decoding took longer than {timeout:g} s (stuck or hostile file)") from None
    except Exception as e:  # a decoder bug must not kill the run; report it like a bad file
        raise ImageLoadError(f"cannot decode image: {type(e).__name__}: {e}") from None


def decode_image(data: bytes, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 raw: bool = False) -> tuple[Image.Image, int, int]:
    """Decode bytes to ``(rgb_image, stored_width, stored_height)``; ``raw``: a RAW camera file,
    read through its embedded preview."""
    try:
        with warnings.catch_warnings():
            # We apply our own pixel cap, with a message that names the flag.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                if raw:
                    img = formats.raw_preview(data)
                else:
                    formats.prepare(data)
                    img = Image.open(io.BytesIO(data))
            except Image.DecompressionBombError as e:
                # PIL refuses over twice its own limit before we see the size; its message
                # carries the pixel count. Within our cap, open again without PIL's check.
                found = re.search(r"\((\d+) pixels\)", str(e))
                pixels = int(found.group(1)) if found else 0
                if not found or pixels > max_pixels:
                    raise ImageLoadError(_too_large(pixels, max_pixels)) from None
                img = _open_unchecked(data)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageLoadError(_too_large(width * height, max_pixels, f"{width}x{height} = "))
            if min_side and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img), width, height
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        reason = str(e).strip() or type(e).__name__
        raise ImageLoadError(f"cannot decode image: {reason}") from None


def _open_unchecked(data: bytes) -> Image.Image:
    """``Image.open`` without PIL's decompression-bomb check, for an image within our own cap.
    PIL can only turn that check off process-wide (``Image.MAX_IMAGE_PIXELS``, seen by every
    thread), so this asks the format plugins directly, as ``Image.open`` does."""
    Image.init()
    prefix = data[:16]
    for factory, accept in Image.OPEN.values():
        accepted = not accept or accept(prefix)
        if not accepted or isinstance(accepted, str):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise UnidentifiedImageError("cannot identify image file")


def _too_large(pixels: int, max_pixels: int, dims: str = "") -> str:
    return (f"{dims}{pixels:,} pixels exceeds the limit of {max_pixels:,} "
            "(likely a decompression bomb; raise --max-pixels to allow it)")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth greyscale array to 0..255 by the range its mode implies.

    ``I;16*`` is 16-bit; ``I`` (32-bit int) usually holds 16-bit data, or 8-bit data when
    nothing exceeds 255; ``F`` holds either [0, 1] or 0..255 floats.
    """
    arr = arr.astype(np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if mode.startswith("I;16") or (mode == "I" and peak > 255):
        full = 65535.0
    elif mode == "F" and peak <= 1.0:
        full = 1.0
    else:
        full = 255.0
    return np.clip(np.rint(arr * (255.0 / full)), 0, 255).astype(np.uint8)


_DCT = np.cos(np.pi / 64 * np.outer(np.arange(8), 2 * np.arange(32) + 1))  # rows 0..7 of DCT-II, n = 32


def perceptual_hash(image: Image.Image) -> int:
    """The 64-bit DCT perceptual hash (pHash) of an RGB image, as a signed 64-bit integer.

    The image (transparency already on white) is reduced to 32x32 grey, the 8x8 lowest
    frequencies of its 2-D DCT are compared with their median: bit ``8 * r + c`` is set where
    coefficient ``(r, c)`` is above it. The same bits as imagehash's ``phash``, up to the
    resampling filter. Robust to scaling and recompression, not to crops.
    """
    small = image.resize((32, 32), Image.BILINEAR, reducing_gap=2.0).convert("L")
    low = _DCT @ np.asarray(small, np.float64) @ _DCT.T
    bits = (low > np.median(low)).ravel()
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value  # SQLite stores signed 64-bit


def hash_distance(a: int, b: int) -> int:
    """Hamming distance between two :func:`perceptual_hash` values."""
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()
