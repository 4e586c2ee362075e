"""A folder of awkward and broken image files, made on the fly from the sample images."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "sample_images" / "fruit" / "orange_simple.png"

# file name -> what a user would expect: None for "readable", else a word the reason contains
EXPECTED = {
    "truncated.jpg": "truncated",
    "empty.jpg": "empty",
    "notes.jpg": "not a recognised image",
    "huge_header.png": "--max-pixels",
    "cmyk.jpg": None,
    "deep16.png": None,
    "palette_alpha.png": None,
    "rotated.jpg": None,
    "animated.gif": None,
    "plain.webp": None,
    "plain.bmp": None,
    "plain.tiff": None,
}


def halves(size=(120, 60), left=(220, 20, 20), right=(20, 20, 220)) -> Image.Image:
    """Left half one colour, right half another: orientation is visible in the pixels."""
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height``, with valid CRCs but no real data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def rotated_jpeg_bytes() -> bytes:
    """``halves()`` stored as JPEG with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    halves().save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def make_bad_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(PHOTO).convert("RGB")
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 6 // 10])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("shopping list: apples, pears\n")
    (folder / "huge_header.png").write_bytes(png_with_header_size(100_000, 100_000))
    photo.convert("CMYK").save(folder / "cmyk.jpg", "JPEG", quality=90)
    ramp = np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(folder / "deep16.png")  # mode I;16
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 32, 64))  # left half palette index 1 (blue, opaque); right half index 0
    pal.info["transparency"] = 0  # index 0 (red) is fully transparent
    pal.save(folder / "palette_alpha.png", transparency=0)
    (folder / "rotated.jpg").write_bytes(rotated_jpeg_bytes())
    frames = [Image.new("RGB", (64, 64), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    photo.save(folder / "plain.bmp")
    Image.open(ROOT / "sample_images" / "fish" / "dolphin.png").convert("RGB").save(folder / "plain.webp")
    Image.open(ROOT / "sample_images" / "birds" / "rooster_01.png").convert("RGB").save(folder / "plain.tiff")
    (folder / ".hidden.png").write_bytes(PHOTO.read_bytes())
    (folder / ".cache").mkdir(exist_ok=True)
    (folder / ".cache" / "thumb.png").write_bytes(PHOTO.read_bytes())
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a symlink loop
    return folder
