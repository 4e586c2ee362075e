"""Loading every common format as upright 8-bit RGB, and refusing broken files with a reason."""

import io

import numpy as np
import pytest
from badfiles import EXPECTED, halves, make_bad_folder, png_with_header_size, rotated_jpeg_bytes
from PIL import Image

from imgembed.errors import ImageLoadError
from imgembed.imaging.decode import decode_image, read_image
from imgembed.imaging.files import iter_images


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    return make_bad_folder(tmp_path_factory.mktemp("bad") / "bad")


def test_each_file_loads_or_fails_with_its_reason(bad_folder):
    for name, failure in EXPECTED.items():
        path = bad_folder / name
        if failure is None:
            loaded = read_image(path)
            assert loaded.image.mode == "RGB", name
        else:
            with pytest.raises(ImageLoadError, match=failure.replace("-", r"\-")):
                read_image(path)


def test_exif_orientation_is_applied():
    img, w, h = decode_image(rotated_jpeg_bytes())
    assert (w, h) == (120, 60)  # as stored
    assert img.size == (60, 120)  # as displayed
    top, bottom = np.asarray(img)[5, 30], np.asarray(img)[-5, 30]
    assert top[0] > 180 and top[2] < 80  # the stored left (red) half is now on top
    assert bottom[2] > 180 and bottom[0] < 80


def test_sixteen_bit_greyscale_keeps_its_range(bad_folder):
    arr = np.asarray(read_image(bad_folder / "deep16.png").image)
    row = arr[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert 120 <= row[len(row) // 2] <= 135  # not clipped to white
    assert (np.diff(row) >= 0).all()


def test_palette_transparency_becomes_white(bad_folder):
    arr = np.asarray(read_image(bad_folder / "palette_alpha.png").image)
    assert tuple(arr[10, 10]) == (0, 0, 255)
    assert tuple(arr[10, 50]) == (255, 255, 255)


def test_rgba_transparency_becomes_white():
    rgba = Image.new("RGBA", (10, 10), (0, 255, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    img, _, _ = decode_image(buf.getvalue())
    assert img.getpixel((5, 5)) == (255, 255, 255)


def test_cmyk_converted_to_rgb(bad_folder):
    cmyk = np.asarray(read_image(bad_folder / "cmyk.jpg").image).astype(int)
    ref = np.asarray(read_image(bad_folder / "plain.bmp").image).astype(int)
    assert np.abs(cmyk - ref).mean() < 8


def test_gif_first_frame(bad_folder):
    assert read_image(bad_folder / "animated.gif").image.getpixel((32, 32)) == (255, 0, 0)


def test_large_jpeg_decoded_at_reduced_size():
    buf = io.BytesIO()
    halves((4000, 3000)).save(buf, "JPEG", quality=80)
    img, w, h = decode_image(buf.getvalue(), min_side=256)
    assert (w, h) == (4000, 3000)
    assert img.size == (500, 375)  # 1/8 scale: the smallest that keeps 256 px on the short side
    full, _, _ = decode_image(buf.getvalue())
    assert full.size == (4000, 3000)


def test_pixel_cap_rejects_decompression_bombs():
    with pytest.raises(ImageLoadError, match="exceeds the limit of 5,000.*--max-pixels"):
        decode_image(png_with_header_size(100, 100), max_pixels=5000)
    with pytest.raises(ImageLoadError, match="10,000,000,000 pixels"):
        decode_image(png_with_header_size(100_000, 100_000))


def test_a_raised_cap_admits_what_pil_refuses_without_changing_pil_for_anyone_else():
    """200 megapixels: past PIL's own hard limit (about 179), within a --max-pixels of 300 M.
    The header-only file then fails to decode, for that reason and not its size; PIL's global
    limit, which other threads rely on, is never touched."""
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png_with_header_size(20_000, 10_000)))
    with pytest.raises(ImageLoadError, match="cannot decode image"):
        decode_image(png_with_header_size(20_000, 10_000), max_pixels=300_000_000)
    assert Image.MAX_IMAGE_PIXELS == before


def test_walk_is_sorted_skips_hidden_and_survives_symlink_loops(bad_folder):
    names = [p.name for p in iter_images(bad_folder)]
    assert names == sorted(names)
    assert ".hidden.png" not in names and "thumb.png" not in names
    assert sorted(names) == sorted(EXPECTED)  # once each, in spite of the loop
