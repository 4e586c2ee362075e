"""The image-to-tensor transform a model expects. It travels with the model and the index."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FITS = ("crop", "whole", "pad")


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes a ``(3, crop, crop)`` tensor: scale to [0, 1], then normalise.

    ``fit`` says how the image is brought to ``crop x crop``:

    - ``crop``: resize the short side to ``resize`` and keep the centre ``crop x crop`` (the
      ImageNet evaluation transform; it cuts off the edges of wide or tall images);
    - ``whole``: resize the whole image to ``crop x crop``, changing its aspect ratio;
    - ``pad``: resize the long side to ``crop`` and pad the short side with the mean colour.

    ``resize`` only matters for ``crop``. Indexes built before ``fit`` existed recorded no
    ``fit`` and were centre-cropped, so a dict without it means ``crop``, and ``to_dict`` leaves
    it out for ``crop``: the identities those indexes recorded still match.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # or "bicubic"
    fit: str = "crop"

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, not {self.fit!r}")

    @property
    def min_side(self) -> int:
        """The short side a decoder must keep (JPEG draft mode may decode smaller than the file)."""
        return self.resize if self.fit == "crop" else self.crop

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.fit == "crop":
            del d["fit"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["resize"]), int(d["crop"]), tuple(map(float, d["mean"])),
                   tuple(map(float, d["std"])), str(d.get("interpolation", "bilinear")), str(d.get("fit", "crop")))

    def to_array(self, image) -> np.ndarray:
        """The values of :meth:`transform` as a (3, crop, crop) float32 array, with PIL and numpy
        alone: the inference path runs without torch. Same geometry, rounding and order of
        operations as torchvision on a PIL image, so the two agree bit for bit (tested)."""
        from PIL import Image

        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        w, h = image.size
        if self.fit == "crop":
            short, long = min(w, h), max(w, h)
            scaled = (self.resize, int(self.resize * long / short))  # torchvision's rounding (down)
            size = scaled if w <= h else scaled[::-1]
            if size != (w, h):
                image = image.resize(size, resample)
            if min(size) < self.crop:
                image = _pad_centred(image, self.crop, (0, 0, 0))
                size = image.size
            left, top = int(round((size[0] - self.crop) / 2.0)), int(round((size[1] - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))
        elif self.fit == "whole":
            if (w, h) != (self.crop, self.crop):
                image = image.resize((self.crop, self.crop), resample)
        else:
            image = PadToSquare(self.crop, self.mean, resample)(image)
        x = np.asarray(image, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        mean = np.asarray(self.mean, np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray((x - mean) / std)


def _pad_centred(image, side: int, fill):
    """torchvision's CenterCrop of an image smaller than the crop: pad it with ``fill`` first."""
    from PIL import Image

    w, h = image.size
    canvas = Image.new("RGB", (max(w, side), max(h, side)), fill)
    canvas.paste(image, ((max(w, side) - w) // 2, (max(h, side) - h) // 2))
    return canvas


class PadToSquare:
    """Resize the long side to ``size`` and centre the image on a ``size x size`` canvas of the
    mean colour (which normalises to zero, as the network's own zero padding does)."""

    def __init__(self, size: int, mean, mode):
        self.size, self.fill, self.mode = size, tuple(round(255 * m) for m in mean), mode

    def __call__(self, image):
        from PIL import Image

        w, h = image.size
        scale = self.size / max(w, h)
        w2, h2 = max(1, round(w * scale)), max(1, round(h * scale))
        if (w2, h2) != (w, h):
            image = image.resize((w2, h2), _pil_mode(self.mode))
        canvas = Image.new("RGB", (self.size, self.size), self.fill)
        canvas.paste(image, ((self.size - w2) // 2, (self.size - h2) // 2))
        return canvas


def _pil_mode(mode):
    """A PIL resampling filter from a torchvision InterpolationMode or a PIL filter."""
    from PIL import Image

    name = getattr(mode, "value", mode)
    if not isinstance(name, str):
        return mode
    return Image.Resampling.BICUBIC if name == "bicubic" else Image.Resampling.BILINEAR
