"""Phone and camera formats (imgembed.imaging.formats): HEIC, AVIF and RAW previews indexed and found,
upright as the same picture in a JPEG is; missing support and missing previews skipped with a
reason. Every test file is made here: a sample drawing saved as HEIC/AVIF with an EXIF
orientation, and DNG files written with tifffile (a preview and a sensor image, or no preview)."""

import io

import numpy as np
import pytest
from PIL import Image

from imgembed import api
from imgembed.errors import ImageLoadError
from imgembed.imaging import formats
from imgembed.imaging.decode import read_image
from imgembed.imaging.files import IMAGE_EXTENSIONS

from conftest import SAMPLES, copy_classes

pytest.importorskip("pillow_heif").register_heif_opener()  # to write the test files
pytest.importorskip("rawpy")
tifffile = pytest.importorskip("tifffile")

SOURCE = SAMPLES / "fruit" / "pear.png"


def exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def two_colour(width=96, height=48) -> Image.Image:
    """Left half blue, right half red: any rotation or mirroring shows."""
    im = Image.new("RGB", (width, height), (230, 20, 20))
    im.paste((20, 20, 230), (0, 0, width // 2, height))
    return im


def halves(im: Image.Image) -> tuple:
    a = np.asarray(im, np.float32)
    h = a.shape[0]
    return tuple(a[: h // 2].mean((0, 1)).round(-1)), tuple(a[h // 2:].mean((0, 1)).round(-1))


def write_dng(path, preview: Image.Image | None) -> None:
    """A minimal DNG: an optional uncompressed RGB preview in IFD0 and a 16-bit Bayer sensor image
    in a sub-IFD, the layout cameras and converters write."""
    sensor = np.random.default_rng(0).integers(0, 4095, (120, 160)).astype(np.uint16)
    dng = [(50706, "B", 4, (1, 4, 0, 0), True), (271, "s", 0, "imgembed", True), (272, "s", 0, "test camera", True)]
    cfa = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50717, "H", 1, 4095, True)]
    with tifffile.TiffWriter(path) as tif:
        if preview is not None:
            tif.write(np.asarray(preview), photometric="rgb", subfiletype=1, subifds=1, extratags=dng)
            tif.write(sensor, photometric=32803, subfiletype=0, extratags=cfa)
        else:
            tif.write(sensor, photometric=32803, subfiletype=0, extratags=dng + cfa)


def test_every_format_read_is_walked():
    assert formats.EXTENSIONS <= IMAGE_EXTENSIONS


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_phone_formats_come_out_upright_like_a_jpeg(tmp_path, suffix):
    # EXIF orientation 6: the stored pixels are to be turned 90 degrees clockwise.
    stored = two_colour()
    stored.save(tmp_path / f"photo{suffix}", exif=exif(6), quality=90)
    stored.save(tmp_path / "photo.jpg", exif=exif(6), quality=90)
    phone, jpeg = read_image(tmp_path / f"photo{suffix}").image, read_image(tmp_path / "photo.jpg").image
    assert phone.size == jpeg.size == (48, 96)
    assert halves(phone) == halves(jpeg)
    assert halves(phone)[0] != halves(phone)[1]  # the test would see a wrong turn


def test_raw_files_are_read_through_their_preview(tmp_path):
    write_dng(tmp_path / "shot.dng", two_colour(80, 60))
    loaded = read_image(tmp_path / "shot.dng")
    assert loaded.image.size == (80, 60) and halves(loaded.image)[0] == halves(two_colour(80, 60))[0]
    write_dng(tmp_path / "bare.dng", None)
    with pytest.raises(ImageLoadError, match="no embedded preview"):
        read_image(tmp_path / "bare.dng")
    (tmp_path / "fake.nef").write_bytes(b"not a raw file" * 100)
    with pytest.raises(ImageLoadError, match="cannot read RAW file"):
        read_image(tmp_path / "fake.nef")


def test_a_missing_plugin_is_a_skip_reason_naming_the_package(tmp_path, monkeypatch):
    two_colour().save(tmp_path / "a.heic")
    monkeypatch.setitem(formats._registered, "heif", False)
    with pytest.raises(ImageLoadError, match=r"pip install pillow-heif"):
        read_image(tmp_path / "a.heic")


def test_heic_avif_and_raw_are_indexed_and_found(tmp_path, model):
    folder = copy_classes(tmp_path / "phone", "fruit", "clocks")
    picture = Image.open(SAMPLES / "birds" / sorted(p.name for p in (SAMPLES / "birds").iterdir())[0]).convert("RGB")
    (folder / "camera").mkdir()
    picture.save(folder / "camera" / "bird.heic", quality=85)
    picture.rotate(90, expand=True).save(folder / "camera" / "bird_turned.avif", exif=exif(6), quality=85)  # stored turned left; EXIF turns it back
    write_dng(folder / "camera" / "bird.dng", picture)
    write_dng(folder / "camera" / "bare.dng", None)
    report = api.index_folder(folder, tmp_path / "index", model, executor=api.LocalPool(workers=0))
    assert report.added == len(list((SAMPLES / "fruit").iterdir())) + len(list((SAMPLES / "clocks").iterdir())) + 3
    assert [(p.rsplit("/", 1)[-1], r) for p, r in report.skipped] == [("bare.dng", "RAW file has no embedded preview that can be read")]
    with api.Searcher(tmp_path / "index") as s:
        buf = io.BytesIO()
        picture.save(buf, "PNG")
        hits = s.search([Image.open(buf)], k=3)[0].hits
    assert sorted(h.row.path for h in hits) == ["camera/bird.dng", "camera/bird.heic", "camera/bird_turned.avif"]
    assert all(h.score > 0.9 for h in hits), [(h.row.path, h.score) for h in hits]
